//! The quantized base's support code (`src/quant.rs`, GGUF blocks in `src/models/gguf.rs`): row
//! reordering of block formats, replacing layers by quantized weights, and the errors.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::DType;
use common::*;
use lora_from_scratch::models::gguf::{unpermute, unpermute_order};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::quant::{quantize_base, use_quantized_weights, BaseQuantization, GgufWeight, QuantizedWeight};
use lora_from_scratch::{inject_lora, LoraConfig};

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
fn only_a_frozen_base_without_adapters_is_quantized() {
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj"])).unwrap();
    let err = quantize_base(m.model.as_mut(), BaseQuantization::Nf4).unwrap_err();
    assert!(err.to_string().contains("q_proj") && err.to_string().contains("before injecting"), "{err}");
}
