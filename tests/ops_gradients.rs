//! Finite-difference gradient checks for every op the GPT-2 and Llama forward passes use.
//!
//! candle records no backward for several of its fast ops, and training then runs with wrong
//! gradients and no error. Each op in `lora_from_scratch::compute::ops` is checked here in f64 against
//! central differences, on random shapes and values; the last tests check whole models by a
//! directional derivative through every adapter.

mod common;

use candle_core::{DType, Tensor, Var};
use common::{finite_difference_check, proptest_config, randn, rng, values, CPU};
use lora_from_scratch::compute::ops;
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::tasks::t02_linear_with_lora::LinearWithLora;
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::{LinearSlot, LoraConfig};
use proptest::prelude::*;

/// `sum(f(x) * r)` for a fixed random `r`: a scalar whose gradient is `r` pulled back through f,
/// so every output element matters (a plain sum would hide some errors, e.g. in softmax).
fn weighted_sum(y: &Tensor, seed: u64) -> Tensor {
    let r = randn(&mut rng(seed), y.dims(), DType::F64);
    (y * r).unwrap().sum_all().unwrap()
}

fn var(seed: u64, shape: &[usize]) -> Var {
    Var::from_tensor(&randn(&mut rng(seed), shape, DType::F64)).unwrap()
}

fn check(x: &Var, f: impl Fn(&Tensor) -> Tensor) {
    if let Err(e) = finite_difference_check(x, |t| weighted_sum(&f(t), 99), 40) {
        panic!("{e}");
    }
}

proptest! {
    #![proptest_config(proptest_config(12))]

    #[test]
    fn frozen_linear_input_gradient(seed in 0u64..1000, b in 1usize..3, t in 1usize..5, i in 1usize..7, o in 1usize..7) {
        let w = randn(&mut rng(seed + 1), &[o, i], DType::F64);
        let x = var(seed, &[b, t, i]);
        check(&x, |x| ops::frozen_linear(x, &w).unwrap());
        // Same values as the plain matmul.
        let plain = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let ours = ops::frozen_linear(x.as_tensor(), &w).unwrap();
        prop_assert!(common::max_abs_diff(&values(&plain), &values(&ours)) < 1e-12);
    }

    #[test]
    fn trainable_linear_weight_gradient(seed in 0u64..1000, i in 1usize..7, o in 1usize..7) {
        // A `Var` weight (full fine-tuning) must take the path that computes its gradient.
        let x = randn(&mut rng(seed + 1), &[2, 3, i], DType::F64);
        let w = var(seed, &[o, i]);
        check(&w, |w| lora_from_scratch::compute::ops::linear_forward(&x, w, None).unwrap());
    }

    #[test]
    fn gelu_new_gradient(seed in 0u64..1000, n in 1usize..20) {
        check(&var(seed, &[n]), |x| ops::gelu_new(x).unwrap());
    }

    #[test]
    fn silu_gradient(seed in 0u64..1000, n in 1usize..20) {
        check(&var(seed, &[n]), |x| ops::silu(x).unwrap());
    }

    #[test]
    fn softmax_gradient(seed in 0u64..1000, r in 1usize..4, c in 1usize..8) {
        check(&var(seed, &[r, c]), |x| ops::softmax_last(x).unwrap());
    }

    #[test]
    fn layer_norm_gradients(seed in 0u64..1000, d in 2usize..9) {
        let (x, w, b) = (var(seed, &[2, 3, d]), var(seed + 1, &[d]), var(seed + 2, &[d]));
        check(&x, |x| ops::layer_norm(x, w.as_tensor(), b.as_tensor(), 1e-5).unwrap());
        check(&w, |w| ops::layer_norm(x.as_tensor(), w, b.as_tensor(), 1e-5).unwrap());
        check(&b, |b| ops::layer_norm(x.as_tensor(), w.as_tensor(), b, 1e-5).unwrap());
    }

    #[test]
    fn rms_norm_gradients(seed in 0u64..1000, d in 1usize..9) {
        let (x, w) = (var(seed, &[2, 3, d]), var(seed + 1, &[d]));
        check(&x, |x| ops::rms_norm(x, w.as_tensor(), 1e-5).unwrap());
        check(&w, |w| ops::rms_norm(x.as_tensor(), w, 1e-5).unwrap());
    }

    #[test]
    fn rope_gradient(seed in 0u64..1000, t in 1usize..5, half in 1usize..4) {
        let cos = randn(&mut rng(seed + 1), &[t, half], DType::F64);
        let sin = randn(&mut rng(seed + 2), &[t, half], DType::F64);
        check(&var(seed, &[1, 2, t, 2 * half]), |x| ops::rope(x, &cos, &sin).unwrap());
    }

    #[test]
    fn embedding_gradient(seed in 0u64..1000, vocab in 2usize..9, d in 1usize..5) {
        let ids = Tensor::new(&[[0u32, (vocab - 1) as u32, 1 % vocab as u32]], &CPU).unwrap();
        check(&var(seed, &[vocab, d]), |table| ops::embedding(&ids, table).unwrap());
    }

    #[test]
    fn causal_attention_gradients(seed in 0u64..1000, kv_heads in 1usize..3, groups in 1usize..3,
                                  t in 1usize..4, offset in 0usize..3) {
        let heads = kv_heads * groups;
        let q = var(seed, &[1, heads, t, 4]);
        let k = var(seed + 1, &[1, kv_heads, offset + t, 4]);
        let v = var(seed + 2, &[1, kv_heads, offset + t, 4]);
        check(&q, |q| ops::causal_attention(q, k.as_tensor(), v.as_tensor()).unwrap());
        check(&k, |k| ops::causal_attention(q.as_tensor(), k, v.as_tensor()).unwrap());
        check(&v, |v| ops::causal_attention(q.as_tensor(), k.as_tensor(), v).unwrap());
    }

    /// The sliding window (Mistral, Qwen2) in both attention paths: the cached one
    /// (`causal_attention_masked`, q after `offset` cached positions) and the whole-sequence one
    /// (`self_attention`, fused on the CPU), with windows shorter and longer than the sequence.
    #[test]
    fn windowed_attention_gradients(seed in 0u64..1000, t in 1usize..5, offset in 0usize..3, window in 1usize..7) {
        let q = var(seed, &[1, 2, t, 4]);
        let k = var(seed + 1, &[1, 1, offset + t, 4]);
        let v = var(seed + 2, &[1, 1, offset + t, 4]);
        let w = Some(window);
        check(&q, |q| ops::causal_attention_masked(q, k.as_tensor(), v.as_tensor(), None, w).unwrap());
        check(&k, |k| ops::causal_attention_masked(q.as_tensor(), k, v.as_tensor(), None, w).unwrap());
        check(&v, |v| ops::causal_attention_masked(q.as_tensor(), k.as_tensor(), v, None, w).unwrap());
        let (qs, ks) = (var(seed + 3, &[2, t, 8]), var(seed + 4, &[2, t, 4]));
        check(&qs, |q| ops::self_attention(q, ks.as_tensor(), ks.as_tensor(), 2, 1, None, w).unwrap());
        check(&ks, |k| ops::self_attention(qs.as_tensor(), k, k, 2, 1, None, w).unwrap());
    }

    #[test]
    fn cross_entropy_gradient(seed in 0u64..1000, n in 1usize..5, vocab in 2usize..7) {
        let targets: Vec<u32> = (0..n).map(|i| ((seed as usize + i) % vocab) as u32).collect();
        let targets = Tensor::new(targets, &CPU).unwrap();
        let x = var(seed, &[n, vocab]);
        finite_difference_check(&x, |l| ops::cross_entropy(l, &targets).unwrap(), 40).unwrap();
    }
}

/// The attention really is causal: changing a later key or value changes no earlier output.
#[test]
fn causal_attention_ignores_the_future() {
    let q = randn(&mut rng(1), &[1, 2, 4, 4], DType::F64);
    let k = randn(&mut rng(2), &[1, 1, 4, 4], DType::F64);
    let v = randn(&mut rng(3), &[1, 1, 4, 4], DType::F64);
    let y = ops::causal_attention(&q, &k, &v).unwrap();
    let k2 = k.slice_assign(&[0..1, 0..1, 3..4, 0..4], &Tensor::ones((1, 1, 1, 4), DType::F64, &CPU).unwrap()).unwrap();
    let y2 = ops::causal_attention(&q, &k2, &v).unwrap();
    let early = |t: &Tensor| values(&t.narrow(2, 0, 3).unwrap());
    assert_eq!(early(&y), early(&y2), "positions 0..3 must not see position 3");
    assert_ne!(values(&y), values(&y2), "position 3 sees itself");
}

/// A sliding window of `w` keys: the query at position p sees positions p + 1 - w ..= p, as
/// transformers' `kv_idx > q_idx - sliding_window`. With w = 1 each query sees only itself, so
/// the output is its own value row; a window as long as the sequence is plain causal attention;
/// in between, moving a key just outside the window changes nothing and just inside does.
#[test]
fn sliding_window_sees_exactly_w_keys() {
    let (t, hd) = (6, 4);
    let q = randn(&mut rng(1), &[1, 2, t, hd], DType::F64);
    let k = randn(&mut rng(2), &[1, 1, t, hd], DType::F64);
    let v = randn(&mut rng(3), &[1, 1, t, hd], DType::F64);
    let attend = |k: &Tensor, w| ops::causal_attention_masked(&q, k, &v, None, w).unwrap();
    let own = attend(&k, Some(1));
    for h in 0..2 {
        assert_eq!(values(&own.narrow(1, h, 1).unwrap()), values(&v), "window 1: each query sees only itself");
    }
    for w in [t, t + 3] {
        assert_eq!(values(&attend(&k, Some(w))), values(&attend(&k, None)), "window {w} >= {t} is plain causal");
    }
    // Window 3, last query (position 5) sees keys 3, 4, 5: key 2 is just outside, key 3 just inside.
    let last = |y: &Tensor| values(&y.narrow(2, t - 1, 1).unwrap());
    let bump = |pos: usize| {
        k.slice_assign(&[0..1, 0..1, pos..pos + 1, 0..hd], &Tensor::ones((1, 1, 1, hd), DType::F64, &CPU).unwrap())
            .unwrap()
    };
    assert_eq!(
        last(&attend(&bump(2), Some(3))),
        last(&attend(&k, Some(3))),
        "key 2 is outside a window of 3 at position 5"
    );
    assert_ne!(
        last(&attend(&bump(3), Some(3))),
        last(&attend(&k, Some(3))),
        "key 3 is inside a window of 3 at position 5"
    );
    // The fused whole-sequence op agrees with the cached path's mask.
    let flat = |x: &Tensor| x.transpose(1, 2).unwrap().reshape((1, t, ())).unwrap();
    let fused = ops::self_attention(&flat(&q), &flat(&k), &flat(&v), 2, 1, None, Some(3)).unwrap();
    let cached = flat(&attend(&k, Some(3)));
    assert!(common::max_abs_diff(&values(&fused), &values(&cached)) < 1e-12);
    assert!(
        ops::self_attention(&flat(&q), &flat(&k), &flat(&v), 2, 1, None, Some(0)).is_err(),
        "a window of 0 is an error"
    );
}

/// Whole models in f64: the gradient of `sum(logits * r)` with respect to every adapter matrix,
/// checked as a directional derivative (move all A and B along a random direction d; the loss
/// must change by <grad, d> * eps).
fn directional_check(fixture: &str, targets: &[&str], split_qkv: bool) {
    let opts = LoadOptions { dtype: DType::F64, split_qkv, ..Default::default() };
    let mut loaded = load_model(&format!("tests/fixtures/{fixture}"), &opts).unwrap();
    let cfg = LoraConfig::new(2, 4.0, targets);
    inject_lora(loaded.model.as_mut(), &cfg).unwrap();
    // inject_lora keeps adapters in f32; rebuild them in f64 with random A and B (B starts at
    // zero, which would make A's gradient zero too).
    for (i, (_, slot)) in loaded.model.linears_mut().into_iter().enumerate() {
        if let LinearSlot::Lora(l) = slot {
            let (a, b) = (l.lora().a().tensor().dims().to_vec(), l.lora().b().tensor().dims().to_vec());
            let a = (randn(&mut rng(10 + 2 * i as u64), &a, DType::F64) * 0.3).unwrap();
            let b = (randn(&mut rng(11 + 2 * i as u64), &b, DType::F64) * 0.3).unwrap();
            let lora = LoraLayer::from_tensors(&a, &b, &cfg).unwrap();
            *slot = LinearSlot::Lora(LinearWithLora::new(l.weight(), l.bias(), lora).unwrap());
        }
    }
    let params = get_lora_parameters(loaded.model.as_ref());
    assert!(params.iter().all(|(_, v)| v.dtype() == DType::F64));
    let ids = Tensor::new(&[[3u32, 1, 4, 1, 5], [9, 2, 6, 5, 3]], &CPU).unwrap();
    let loss = |m: &dyn lora_from_scratch::models::CausalLm| {
        let logits = m.forward(&ids, None, true).unwrap().to_dtype(DType::F64).unwrap();
        weighted_sum(&logits, 7)
    };
    let grads = loss(loaded.model.as_ref()).backward().unwrap();
    let dirs: Vec<Tensor> =
        params.iter().enumerate().map(|(i, (_, v))| randn(&mut rng(50 + i as u64), v.dims(), DType::F64)).collect();
    let mut predicted = 0.0;
    for ((name, v), d) in params.iter().zip(&dirs) {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient reached {name}"));
        predicted += values(&(g * d).unwrap().sum_all().unwrap())[0];
    }
    let originals: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let eps = 1e-6;
    let at = |s: f64| {
        for (((_, v), d), o) in params.iter().zip(&dirs).zip(&originals) {
            v.set(&(o + (d * s).unwrap()).unwrap()).unwrap();
        }
        values(&loss(loaded.model.as_ref()))[0]
    };
    let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
    let tol = 1e-6 * predicted.abs().max(1.0);
    assert!((numeric - predicted).abs() < tol, "{fixture}: backprop {predicted}, finite differences {numeric}");
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t0*.rs")]
fn gpt2_adapter_gradients_match_finite_differences() {
    directional_check("tiny-gpt2", &["c_attn", "c_proj", "c_fc"], false);
    directional_check("tiny-gpt2", &["c_attn.q", "c_attn.v", "mlp.c_proj"], true);
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t0*.rs")]
fn llama_adapter_gradients_match_finite_differences() {
    directional_check("tiny-llama", &["all-linear", "lm_head"], false);
    // Frozen o_proj and down_proj: the gradient runs through the fused residual ops.
    directional_check("tiny-llama", &["q_proj", "v_proj"], false);
}

/// Qwen2 (biased q, k, v under adapters; layer 1 sliding) and Mistral (a window on every layer,
/// frozen o_proj and down_proj through the fused residual ops).
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t0*.rs")]
fn qwen2_and_mistral_adapter_gradients_match_finite_differences() {
    directional_check("tiny-qwen2", &["all-linear"], false);
    directional_check("tiny-mistral", &["q_proj", "v_proj", "up_proj"], false);
}
