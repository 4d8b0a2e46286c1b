//! Grader for task 1.2, `LinearWithLora` (book/src/t02_linear_with_lora.md).
//!
//! Run: `cargo test --features exercises --test t02_linear_with_lora`.

#[macro_use]
mod common;

use candle_core::{DType, Tensor, Var};
use common::*;
use lora_from_scratch::compute::ops::linear_forward;
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::tasks::t02_linear_with_lora::LinearWithLora;
use lora_from_scratch::LoraConfig;
use proptest::prelude::*;

fn config(r: usize, alpha: f64) -> LoraConfig {
    LoraConfig::new(r, alpha, &["q_proj"])
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn at_init_the_adapted_layer_equals_the_base(inp in 1usize..40, out in 1usize..40, r in 1usize..9,
                                                  batch in 1usize..4, seq in 1usize..6, with_bias in any::<bool>(),
                                                  seed in any::<u64>()) {
        book("t02_linear_with_lora", "Equal to the base at the start");
        let g = &mut rng(seed);
        let w = randn(g, &[out, inp], DType::F32);
        let b = with_bias.then(|| randn(g, &[out], DType::F32));
        let lora = LoraLayer::new(inp, out, &config(r, 16.0), g, DType::F32, &CPU).unwrap();
        let layer = LinearWithLora::new(&w, b.as_ref(), lora).unwrap();
        let x = randn(g, &[batch, seq, inp], DType::F32);
        let y = layer.forward(&x, false).unwrap();
        prop_assert_eq!(y.dims().to_vec(), vec![batch, seq, out], "output must be [batch, seq, out]");
        prop_assert_eq!(bits(&y), bits(&linear_forward(&x, &w, b.as_ref()).unwrap()),
            "with B = 0 the adapted layer must equal the base layer bit for bit: fine-tuning starts from the pretrained model");
    }

    #[test]
    fn the_layer_keeps_its_base_and_its_adapter(inp in 1usize..24, out in 1usize..24, r in 1usize..7,
                                                with_bias in any::<bool>(), seed in any::<u64>()) {
        book("t02_linear_with_lora", "What freezing means in candle");
        let g = &mut rng(seed);
        let w = randn(g, &[out, inp], DType::F32);
        let bias = with_bias.then(|| randn(g, &[out], DType::F32));
        let (a, b) = (randn(g, &[r, inp], DType::F32), randn(g, &[out, r], DType::F32));
        let lora = LoraLayer::from_tensors(&a, &b, &config(r, 2.0)).unwrap();
        let layer = LinearWithLora::new(&w, bias.as_ref(), lora).unwrap();
        prop_assert_eq!(bits(layer.weight()), bits(&w), "weight() must be the base weight W0 it was built with");
        prop_assert_eq!(layer.bias().map(bits), bias.as_ref().map(bits),
            "bias() must be the base bias it was built with (None for a layer without one)");
        prop_assert_eq!(bits(layer.lora().a().tensor()), bits(&a), "lora() must be the adapter it was built with");
        prop_assert_eq!(bits(layer.lora().b().tensor()), bits(&b), "lora() must be the adapter it was built with");
    }

    #[test]
    fn forward_is_base_plus_update(inp in 1usize..24, out in 1usize..24, r in 1usize..7, n in 1usize..6,
                                   with_bias in any::<bool>(), seed in any::<u64>()) {
        book("t02_linear_with_lora", "The forward pass");
        let g = &mut rng(seed);
        let w = randn(g, &[out, inp], DType::F32);
        let bias = with_bias.then(|| randn(g, &[out], DType::F32));
        let (a, b) = (randn(g, &[r, inp], DType::F32), randn(g, &[out, r], DType::F32));
        let cfg = config(r, 2.0);
        let layer = LinearWithLora::new(&w, bias.as_ref(), LoraLayer::from_tensors(&a, &b, &cfg).unwrap()).unwrap();
        let x = randn(g, &[n, inp], DType::F32);
        let got = values(&layer.forward(&x, false).unwrap());
        // Reference: x W^T + b + (alpha / r) x A^T B^T, by plain loops.
        let xv = values(&x);
        let base = ref_matmul_t(&xv, n, inp, &values(&w), out);
        let update = ref_matmul_t(&ref_matmul_t(&xv, n, inp, &values(&a), r), n, r, &values(&b), out);
        let bv = bias.as_ref().map(values).unwrap_or_else(|| vec![0.0; out]);
        let want: Vec<f64> = (0..n * out).map(|i| base[i] + bv[i % out] + 2.0 / r as f64 * update[i]).collect();
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        prop_assert_close!(got, want, 1e-5 * scale, "forward must be x W^T + b + scaling * x A^T B^T");
    }

    #[test]
    fn input_gradient_matches_finite_differences(inp in 1usize..10, out in 1usize..10, r in 1usize..5,
                                                 seed in any::<u64>()) {
        book("t02_linear_with_lora", "Gradients");
        let g = &mut rng(seed);
        let w = randn(g, &[out, inp], DType::F64);
        let bias = randn(g, &[out], DType::F64);
        let (a, b) = (randn(g, &[r, inp], DType::F64), randn(g, &[out, r], DType::F64));
        let layer = LinearWithLora::new(&w, Some(&bias), LoraLayer::from_tensors(&a, &b, &config(r, 3.0)).unwrap()).unwrap();
        let weights = randn(g, &[3, out], DType::F64);
        let x = Var::from_tensor(&randn(g, &[3, inp], DType::F64)).unwrap();
        let check = finite_difference_check(&x, |x| (layer.forward(x, false).unwrap() * &weights).unwrap().sum_all().unwrap(), 40);
        prop_assert!(check.is_ok(),
            "the input gradient must flow through both the base and the adapter, or the layers below train wrongly: {}",
            check.unwrap_err());
    }
}

#[test]
fn the_base_weight_gets_no_gradient_even_from_a_var() {
    book("t02_linear_with_lora", "What freezing means in candle");
    let g = &mut rng(11);
    let w = Var::from_tensor(&randn(g, &[6, 5], DType::F32)).unwrap();
    let bias = Var::from_tensor(&randn(g, &[6], DType::F32)).unwrap();
    let lora = LoraLayer::new(5, 6, &config(2, 4.0), g, DType::F32, &CPU).unwrap();
    let layer = LinearWithLora::new(w.as_tensor(), Some(bias.as_tensor()), lora).unwrap();
    let target = randn(g, &[4, 6], DType::F32);
    let x = randn(g, &[4, 5], DType::F32);
    let grads = (layer.forward(&x, true).unwrap() * &target).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_none(), "the base weight must be frozen (detached): no gradient, no update");
    assert!(grads.get(bias.as_tensor()).is_none(), "the base bias must be frozen (detached)");
    assert!(grads.get(layer.lora().b().tensor()).is_some(), "the adapter's B must get a gradient");
}

#[test]
fn mismatched_shapes_are_errors() {
    book("t02_linear_with_lora", "The forward pass");
    let g = &mut rng(12);
    let w = randn(g, &[6, 5], DType::F32);
    let lora = |i, o| LoraLayer::new(i, o, &config(2, 4.0), &mut rng(0), DType::F32, &CPU).unwrap();
    assert!(
        LinearWithLora::new(&w, None, lora(4, 6)).is_err(),
        "an adapter for 4 inputs cannot sit on a 5-input layer"
    );
    assert!(
        LinearWithLora::new(&w, None, lora(5, 7)).is_err(),
        "an adapter for 7 outputs cannot sit on a 6-output layer"
    );
    let bad_bias = Tensor::zeros(5, DType::F32, &CPU).unwrap();
    let err = LinearWithLora::new(&w, Some(&bad_bias), lora(5, 6)).unwrap_err();
    assert!(err.to_string().contains("bias"), "a bias of the wrong length must be an error naming the bias: {err}");
    let layer = LinearWithLora::new(&w, None, lora(5, 6)).unwrap();
    assert!(
        layer.forward(&Tensor::zeros((2, 4), DType::F32, &CPU).unwrap(), false).is_err(),
        "a wrong input width must be an error"
    );
}
