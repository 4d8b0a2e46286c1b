//! The quantized base's support code (`src/quant.rs`, GGUF blocks in `src/models/gguf.rs`): row
//! reordering of block formats, replacing layers by quantized weights, and the errors.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::DType;
use common::*;
use lora_from_scratch::compute::quantized::{GgufWeight, QuantizedWeight};
use lora_from_scratch::models::gguf::{unpermute, unpermute_order};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::qlora::base::{quantize_base, use_quantized_weights, BaseQuantization};
use lora_from_scratch::tasks::t03_inject::inject_lora;
use lora_from_scratch::LoraConfig;

#[test]
fn unpermute_order_is_the_row_order_of_unpermute() {
    let w = randn(&mut rng(1), &[24, 5], DType::F32);
    for heads in [1, 2, 3, 6] {
        let order: Vec<u32> = unpermute_order(24, heads).into_iter().map(|i| i as u32).collect();
        let idx = candle_core::Tensor::new(order, &CPU).unwrap();
        let by_order = w.index_select(&idx, 0).unwrap();
        assert_eq!(bits(&by_order), bits(&unpermute(&w, heads).unwrap()), "{heads} heads");
    }
}

#[test]
fn permuting_block_rows_moves_whole_rows_exactly() {
    let w = randn(&mut rng(2), &[8, 64], DType::F32);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let q = GgufWeight(QTensor::quantize(&w, dtype).unwrap());
        let order = vec![3, 1, 7, 0, 2, 6, 5, 4];
        let moved = q.permute_rows(&order).unwrap().dequantize(&CPU).unwrap();
        let idx = candle_core::Tensor::new(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), &CPU).unwrap();
        let want = q.dequantize(&CPU).unwrap().index_select(&idx, 0).unwrap();
        assert_eq!(bits(&moved), bits(&want), "{dtype:?}");
        assert!(q.permute_rows(&[0, 1]).is_err(), "an order of the wrong length is an error");
    }
}

#[test]
fn quantized_weights_replace_layers_by_name_and_shape() {
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let w = m.model.linears()[0].1.base_weight().unwrap();
    let name = m.model.linears()[0].0.clone();
    let q8: Arc<dyn QuantizedWeight> = Arc::new(GgufWeight(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()));
    // Wrong shape and unknown names are errors that name the layer.
    let wrong: Arc<dyn QuantizedWeight> =
        Arc::new(GgufWeight(QTensor::quantize(&w.t().unwrap().contiguous().unwrap(), GgmlDType::Q8_0).unwrap()));
    if wrong.dims() != q8.dims() {
        let err = use_quantized_weights(m.model.as_mut(), HashMap::from([(name.clone(), wrong)])).unwrap_err();
        assert!(err.to_string().contains(&name), "{err}");
    }
    let err = use_quantized_weights(m.model.as_mut(), HashMap::from([("model.nowhere".to_string(), q8.clone())]))
        .unwrap_err();
    assert!(err.to_string().contains("model.nowhere"), "{err}");
    assert_eq!(use_quantized_weights(m.model.as_mut(), HashMap::from([(name.clone(), q8)])).unwrap(), 1);
    let back = m.model.linears()[0].1.base_weight().unwrap();
    assert!(max_abs_diff(&values(&back), &values(&w)) < 0.02, "Q8_0 keeps the weight to 8 bits");
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t*.rs")]
fn only_a_frozen_base_without_adapters_is_quantized() {
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj"])).unwrap();
    let err = quantize_base(m.model.as_mut(), BaseQuantization::Nf4).unwrap_err();
    assert!(err.to_string().contains("q_proj") && err.to_string().contains("before injecting"), "{err}");
}

/// The quantized layers' fused paths (adapter beside a quantized weight; quantized o/down
/// projection plus the residual) give the values and adapter gradients of the same model with
/// the dequantized weights in ordinary dense layers.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (LinearWithLora, inject_lora); graded by tests/t*.rs")]
fn a_quantized_model_computes_what_its_dequantized_copy_computes() {
    use lora_from_scratch::tasks::t02_linear_with_lora::LinearWithLora;
    use lora_from_scratch::tasks::t03_inject::get_lora_parameters;
    use lora_from_scratch::{Linear, LinearSlot};
    let mut q = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    quantize_base(q.model.as_mut(), BaseQuantization::Nf4).unwrap();
    inject_lora(q.model.as_mut(), &LoraConfig::new(3, 6.0, &["q_proj", "up_proj"])).unwrap();
    for (i, (_, v)) in get_lora_parameters(q.model.as_ref()).into_iter().enumerate() {
        v.set(&(randn(&mut rng(40 + i as u64), v.dims(), DType::F32) * 0.1).unwrap()).unwrap();
    }
    // The dense copy: same dequantized weights, the very same adapter Vars.
    let mut d = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let slots: Vec<LinearSlot> = q.model.linears().into_iter().map(|(_, s)| s.clone()).collect();
    for ((_, slot), from) in d.model.linears_mut().into_iter().zip(slots) {
        let (w, b) = (from.base_weight().unwrap(), from.base_bias().cloned());
        *slot = match from.adapter() {
            Some(a) => LinearSlot::Lora(LinearWithLora::new(&w, b.as_ref(), a.clone()).unwrap()),
            None => LinearSlot::Linear(Linear::frozen(&w, b.as_ref()).unwrap()),
        };
    }
    // The embedding table is quantized too: the copy gets it dequantized.
    let tables = q.model.quantized_params();
    assert_eq!(tables.len(), 1, "the embedding table is kept quantized");
    for (name, p) in d.model.params_mut() {
        if let Some((_, t)) = tables.iter().find(|(n, _)| *n == name) {
            *p = lora_from_scratch::Param::frozen(&t.dequantize(&CPU).unwrap());
        }
    }
    let ids = token_ids(&mut rng(9), 2, 5, 101);
    let g = randn(&mut rng(10), &[2, 5, 101], DType::F32);
    let run = |m: &lora_from_scratch::models::load::LoadedModel| {
        let logits = m.model.forward(&ids, None, true).unwrap();
        let grads = (&logits * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gs: Vec<Vec<f64>> = get_lora_parameters(m.model.as_ref())
            .iter()
            .map(|(_, v)| values(grads.get(v.as_tensor()).unwrap()))
            .collect();
        (values(&logits), gs)
    };
    let ((lq, gq), (ld, gd)) = (run(&q), run(&d));
    assert!(max_abs_diff(&lq, &ld) < 1e-5, "logits differ by {}", max_abs_diff(&lq, &ld));
    for (a, b) in gq.iter().zip(&gd) {
        assert!(max_abs_diff(a, b) < 1e-4, "adapter gradients differ by {}", max_abs_diff(a, b));
    }
    assert_eq!(gq.len(), 8);
}

/// GPT-2's linear layers (Conv1D, stored transposed) quantize too; its embedding stays dense
/// (only Llama keeps its table quantized), and merging gives back the adapted model's logits.
#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 and 3 code (inject_lora, merge_lora_weights); graded by tests/t*.rs"
)]
fn gpt2_quantizes_its_linears_and_merges() {
    use lora_from_scratch::tasks::t03_inject::get_lora_parameters;
    use lora_from_scratch::tasks::t08_merge::merge_lora_weights;
    let mut m = load_model("tests/fixtures/tiny-gpt2", &LoadOptions::default()).unwrap();
    let n = quantize_base(m.model.as_mut(), BaseQuantization::Nf4).unwrap();
    assert_eq!(n, m.model.linears().len(), "every linear of GPT-2 is quantized, nothing else");
    assert!(m.model.quantized_params().is_empty());
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["c_attn", "mlp.c_proj"])).unwrap();
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
        v.set(&(randn(&mut rng(60 + i as u64), v.dims(), DType::F32) * 0.1).unwrap()).unwrap();
    }
    let ids = token_ids(&mut rng(61), 2, 5, 50);
    let adapted = values(&m.model.forward(&ids, None, false).unwrap());
    merge_lora_weights(m.model.as_mut()).unwrap();
    let merged = values(&m.model.forward(&ids, None, false).unwrap());
    assert!(max_abs_diff(&adapted, &merged) < 1e-4, "{}", max_abs_diff(&adapted, &merged));
}

/// A bf16 model quantizes from its bf16 weights and runs (the composed path, off the fused ops'
/// f32/f64), close to the same model quantized from f32.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the QLoRA challenge's code (Nf4Tensor); graded by tests/t*.rs")]
fn a_bf16_model_quantizes_and_runs() {
    let load = |dtype| {
        let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions { dtype, ..Default::default() }).unwrap();
        quantize_base(m.model.as_mut(), BaseQuantization::Nf4).unwrap();
        inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj"])).unwrap();
        m
    };
    let ids = token_ids(&mut rng(70), 1, 6, 101);
    let f = values(&load(DType::F32).model.forward(&ids, None, false).unwrap());
    let b = values(&load(DType::BF16).model.forward(&ids, None, false).unwrap());
    let scale = f.iter().fold(0f64, |m, v| m.max(v.abs()));
    // bf16 rounds each value within 2^-9; rounding the weights before NF4 also moves a few across
    // a level boundary, so the bound is a few bf16 steps wider than for bf16 alone (measured: 2.0 %).
    let diff = max_abs_diff(&f, &b);
    assert!(diff < 16.0 * 2f64.powi(-9) * scale, "bf16 logits {diff} away (scale {scale})");
}
