//! Grader for challenge 1, QLoRA (book/src/t09_qlora.md).
//!
//! Run: `cargo test --features exercises --test t09_qlora`.
//! The reference values come from bitsandbytes (`scripts/make_nf4_fixture.py`).

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use common::*;
use lora_from_scratch::compute::ops;
use lora_from_scratch::compute::quantized::QuantizedWeight;
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::qlora::base::{quantize_base, BaseQuantization};
use lora_from_scratch::qlora::linear::QuantizedLinear;
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t08_merge::merge_lora_weights;
use lora_from_scratch::tasks::t09_qlora::Nf4Tensor;
use lora_from_scratch::tasks::t09_qlora::{nearest_level, nf4_code_book, ABSMAX_BLOCK, NF4_BLOCK};
use lora_from_scratch::train::optim::{AdamW, AdamWParams};
use lora_from_scratch::LoraConfig;
use proptest::prelude::*;

fn bnb() -> HashMap<String, Tensor> {
    candle_core::safetensors::load("tests/fixtures/nf4/bnb_nf4.safetensors", &CPU).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Level indices from a packed buffer, first element in the high nibble.
fn unpack(codes: &[u8], n: usize) -> Vec<u8> {
    (0..n).map(|i| if i % 2 == 0 { codes[i / 2] >> 4 } else { codes[i / 2] & 0x0f }).collect()
}

#[test]
fn the_code_book_is_bitsandbytes_nf4() {
    book("t09_qlora", "The code book");
    let ours = nf4_code_book();
    let theirs = f32s(&bnb()["code"]);
    let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    assert_close!(wide(&ours), wide(&theirs), 1e-6, "the NF4 levels must be bitsandbytes'");
    assert!(ours.windows(2).all(|w| w[0] < w[1]), "levels ascend");
    assert_eq!((ours[0], ours[7], ours[15]), (-1.0, 0.0, 1.0), "-1, an exact 0, and 1 are levels");
}

#[test]
fn codes_equal_bitsandbytes_and_absmax_is_within_its_8_bit_step() {
    book("t09_qlora", "Quantizing a tensor");
    let f = bnb();
    for case in ["layer", "mixed"] {
        let x = &f[&format!("{case}.x")];
        let q = Nf4Tensor::quantize(x).unwrap();
        let theirs = f[&format!("{case}.codes")].to_vec1::<u8>().unwrap();
        assert_eq!(q.packed_codes(), theirs.as_slice(), "{case}: packed codes differ from bitsandbytes'");
        // The absmax constants went through the 8-bit second quantization: each is within half
        // a step (scale / 127 / 2) of the exact one, the step of its group of 256.
        let exact = f32s(&f[&format!("{case}.absmax")]);
        let mean = exact.iter().sum::<f32>() / exact.len() as f32;
        for (b, &c) in exact.iter().enumerate() {
            let group =
                &exact[b / ABSMAX_BLOCK * ABSMAX_BLOCK..((b / ABSMAX_BLOCK + 1) * ABSMAX_BLOCK).min(exact.len())];
            let scale = group.iter().fold(0f32, |m, &a| m.max((a - mean).abs()));
            let err = (q.block_absmax(b) - c).abs();
            assert!(err <= scale / 254.0 + 1e-5, "{case}: block {b} absmax {} vs exact {c}", q.block_absmax(b));
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(32))]

    #[test]
    fn nearest_level_is_the_nearest(v in -1.0f32..=1.0) {
        book("t09_qlora", "Rounding to the nearest level");
        let levels = nf4_code_book();
        let i = nearest_level(&levels, v) as usize;
        let best = levels.iter().map(|l| (l - v).abs()).fold(f32::INFINITY, f32::min);
        prop_assert_close!([f64::from((levels[i] - v).abs())], [f64::from(best)], 1e-7,
            "{} -> level {} ({}) must be the nearest level", v, i, levels[i]);
    }

    /// Every element comes back within the rounding NF4 allows: half the widest gap between
    /// neighbouring levels times its block's absmax, plus the 8-bit absmax rounding.
    #[test]
    fn round_trip_error_is_within_the_nf4_bound(seed in 0u64..1000, n in 1usize..3000, scale in 0.001f64..10.0) {
        book("t09_qlora", "Dequantizing");
        let x = (randn(&mut rng(seed), &[n], DType::F32) * scale).unwrap();
        let q = Nf4Tensor::quantize(&x).unwrap();
        let back = f32s(&q.dequantize(&CPU).unwrap());
        prop_assert_eq!(back.len(), n);
        let xs = f32s(&x);
        let levels = nf4_code_book();
        let half_gap = levels.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max) / 2.0;
        let absmax: Vec<f32> = xs.chunks(NF4_BLOCK).map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
        let mean = absmax.iter().sum::<f32>() / absmax.len() as f32;
        for (i, (&a, &b)) in xs.iter().zip(&back).enumerate() {
            let blk = i / NF4_BLOCK;
            let group = &absmax[blk / ABSMAX_BLOCK * ABSMAX_BLOCK..((blk / ABSMAX_BLOCK + 1) * ABSMAX_BLOCK).min(absmax.len())];
            let s = group.iter().fold(0f32, |m, &c| m.max((c - mean).abs()));
            let bound = absmax[blk] * half_gap + s / 254.0 + 1e-6 * absmax[blk];
            prop_assert!(approx::abs_diff_eq!(a, b, epsilon = bound), "element {}: {} came back as {} (bound {})", i, a, b, bound);
        }
    }

    /// Values that are levels times a block absmax of 1 are stored as exactly those levels.
    #[test]
    fn levels_are_stored_exactly_and_packed_high_nibble_first(seed in 0u64..1000, blocks in 1usize..6) {
        book("t09_qlora", "Quantizing a tensor");
        use rand::Rng;
        let g = &mut rng(seed);
        let levels = nf4_code_book();
        let mut idx: Vec<u8> = (0..blocks * NF4_BLOCK).map(|_| g.random_range(0..16u8)).collect();
        for b in 0..blocks {
            idx[b * NF4_BLOCK + g.random_range(0..NF4_BLOCK)] = 15; // absmax 1 in every block
        }
        let x = Tensor::from_vec(idx.iter().map(|&i| levels[i as usize]).collect::<Vec<f32>>(), idx.len(), &CPU).unwrap();
        let q = Nf4Tensor::quantize(&x).unwrap();
        prop_assert_eq!(q.packed_codes().len(), idx.len() / 2, "two codes per byte");
        prop_assert_eq!(unpack(q.packed_codes(), idx.len()), idx);
    }
}

/// NF4's point: on normally distributed weights its levels, placed at the normal's quantiles,
/// lose less than evenly spaced 4-bit levels with the same absmax scaling.
#[test]
fn nf4_beats_evenly_spaced_4_bit_levels_on_normal_weights() {
    book("t09_qlora", "The code book");
    let x = randn(&mut rng(7), &[64 * 512], DType::F32);
    let xs = f32s(&x);
    let back = f32s(&Nf4Tensor::quantize(&x).unwrap().dequantize(&CPU).unwrap());
    let mse = |y: &[f32]| xs.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / xs.len() as f64;
    let int4: Vec<f32> = xs
        .chunks(NF4_BLOCK)
        .flat_map(|b| {
            let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            b.iter().map(move |v| (v / m * 7.0).round() / 7.0 * m).collect::<Vec<_>>()
        })
        .collect();
    let (nf4, even) = (mse(&back), mse(&int4));
    assert!(nf4 < 0.85 * even, "NF4 mean squared error {nf4} is not clearly below evenly spaced levels' {even}");
}

#[test]
fn double_quantization_costs_about_4_127_bits_per_parameter() {
    book("t09_qlora", "Bits per parameter");
    let n = NF4_BLOCK * ABSMAX_BLOCK * 8;
    let q = Nf4Tensor::quantize(&randn(&mut rng(3), &[n / 256, 256], DType::F32)).unwrap();
    // 4 bits, 8 bits per 64 weights, 32 bits per 64 * 256 weights, and one f32 mean.
    let want = (n / 2 + n / NF4_BLOCK + 4 * (n / NF4_BLOCK / ABSMAX_BLOCK) + 4) as f64 * 8.0 / n as f64;
    assert_close!([q.bits_per_parameter()], [want], 1e-9, "bits per parameter: 4, plus the absmax and its constants");
    assert!((4.126..4.128).contains(&q.bits_per_parameter()));
    assert_eq!(q.shape(), &[n / 256, 256]);
}

#[test]
fn bad_input_is_an_error() {
    book("t09_qlora", "Quantizing a tensor");
    assert!(Nf4Tensor::quantize(&Tensor::zeros(0, DType::F32, &CPU).unwrap()).is_err(), "empty");
    let nan = Tensor::new(&[1.0f32, f32::NAN, 2.0], &CPU).unwrap();
    let err = Nf4Tensor::quantize(&nan).unwrap_err().to_string();
    assert!(err.contains("element 1"), "the error names the bad element: {err}");
    // A block of zeros is fine and comes back as zeros.
    let z = Nf4Tensor::quantize(&Tensor::zeros(100, DType::F32, &CPU).unwrap()).unwrap();
    assert!(f32s(&z.dequantize(&CPU).unwrap()).iter().all(|&v| v == 0.0));
}

/// The quantized linear records a backward: the input gradient is dY W, with W dequantized.
#[test]
fn gradients_pass_through_the_quantized_linear() {
    book("t09_qlora", "A quantized frozen linear");
    let g = &mut rng(11);
    let w: Arc<dyn QuantizedWeight> = Arc::new(Nf4Tensor::quantize(&randn(g, &[6, 128], DType::F32)).unwrap());
    let x = Var::from_tensor(&randn(g, &[2, 3, 128], DType::F64)).unwrap();
    let weights = randn(g, &[2, 3, 6], DType::F64);
    let loss = |x: &Tensor| (ops::quantized_linear(x, &w).unwrap() * &weights).unwrap().sum_all().unwrap();
    finite_difference_check(&x, loss, 40).unwrap();
    // And the values are x W^T with the dequantized W.
    let dense = w.dequantize(&CPU).unwrap().to_dtype(DType::F64).unwrap();
    let want = x.as_tensor().broadcast_matmul(&dense.t().unwrap()).unwrap();
    let got = ops::quantized_linear(x.as_tensor(), &w).unwrap();
    assert_close!(values(&got), values(&want), 1e-10, "the quantized linear must be x W^T with W dequantized");
}

/// QLoRA: the base is quantized, adapters sit beside it, and a training step changes only them.
#[test]
fn a_qlora_step_changes_only_the_adapters_and_merging_dequantizes() {
    book("t09_qlora", "QLoRA: LoRA on a quantized base");
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let n = quantize_base(m.model.as_mut(), BaseQuantization::Nf4).unwrap();
    assert!(n > 0);
    inject_lora(m.model.as_mut(), &LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "down_proj"])).unwrap();
    let head = m.model.output_head().map(str::to_string);
    for (name, slot) in m.model.linears() {
        let quantized = slot.kind::<QuantizedLinear>().is_some();
        assert_eq!(quantized, Some(&name) != head.as_ref(), "{name}: every linear but the head stays quantized");
    }
    let base_before = base_weight_bits(m.model.as_ref());
    let vars = get_lora_parameters(m.model.as_ref());
    assert_eq!(vars.len(), 2 * 3 * 2, "A and B of q, v and down in both layers train");
    let ids = token_ids(&mut rng(5), 2, 6, 101);
    let g = randn(&mut rng(6), &[2, 6, 101], DType::F32);
    let b_before: Vec<Vec<u32>> = vars.iter().map(|(_, v)| bits(v.as_tensor())).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: 1e-2, ..Default::default() }).unwrap();
    for _ in 0..2 {
        let logits = m.model.forward(&ids, None, true).unwrap();
        let grads = (logits * &g).unwrap().sum_all().unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
    }
    assert_eq!(base_weight_bits(m.model.as_ref()), base_before, "the quantized base and the norms did not move");
    let changed = vars.iter().zip(&b_before).filter(|((_, v), b)| bits(v.as_tensor()) != **b).count();
    assert_eq!(changed, vars.len(), "every adapter matrix moved in two steps");

    // Merging dequantizes: the merged model is dense and gives the adapted model's logits.
    let adapted = values(&m.model.forward(&ids, None, false).unwrap());
    merge_lora_weights(m.model.as_mut()).unwrap();
    let merged = values(&m.model.forward(&ids, None, false).unwrap());
    assert_close!(merged, adapted, 1e-4, "merged logits must equal the adapted model's");
}
