//! Every fused training op (`lora_from_scratch::compute::fused`) against the composed candle version it
//! replaces (`ops::composed`): same values, same gradient for every input, and the fused
//! gradient against central finite differences, in f64 on random shapes and values. Plus f32
//! values, and no gradient for inputs that do not track one (frozen weights).

mod common;

use candle_core::{DType, Tensor, Var};
use common::{finite_difference_check, max_abs_diff, proptest_config, randn, rng, values};
use lora_from_scratch::compute::fused;
use lora_from_scratch::compute::ops::{self, composed};
use proptest::prelude::*;

fn var(seed: u64, shape: &[usize]) -> Var {
    Var::from_tensor(&randn(&mut rng(seed), shape, DType::F64)).unwrap()
}

/// `sum(y * r)` for a fixed random `r`, so every output element's gradient matters.
fn weighted_sum(y: &Tensor) -> Tensor {
    let r = randn(&mut rng(99), y.dims(), y.dtype());
    (y * r).unwrap().sum_all().unwrap()
}

/// Fused and composed agree in value and in the gradient of every var, and the fused gradient
/// matches finite differences.
fn agree(
    vars: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) -> Result<(), String> {
    agree_within(1e-9, vars, fused, composed)
}

/// [`agree`] with the gradients compared to `grad_tol`.
fn agree_within(
    grad_tol: f64,
    vars: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) -> Result<(), String> {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, yc) = (fused(&ts), composed(&ts));
    if yf.dims() != yc.dims() {
        return Err(format!("shapes differ: fused {:?}, composed {:?}", yf.dims(), yc.dims()));
    }
    let d = max_abs_diff(&values(&yf), &values(&yc));
    if d > 1e-10 {
        return Err(format!("values differ by {d}"));
    }
    let (gf, gc) = (weighted_sum(&yf).backward().unwrap(), weighted_sum(&yc).backward().unwrap());
    for (i, v) in vars.iter().enumerate() {
        let (Some(a), Some(b)) = (gf.get(v.as_tensor()), gc.get(v.as_tensor())) else {
            return Err(format!("input {i}: a gradient is missing"));
        };
        let d = max_abs_diff(&values(a), &values(b));
        if d > grad_tol {
            return Err(format!("input {i}: gradients differ by {d}"));
        }
        let at = |t: &Tensor| {
            let mut ts = ts.clone();
            ts[i] = t.clone();
            weighted_sum(&fused(&ts))
        };
        finite_difference_check(v, at, 30).map_err(|e| format!("input {i}: {e}"))?;
    }
    Ok(())
}

/// The same inputs in f32: values, and the gradient of every input (the f32 backward the
/// training step runs), within f32 rounding of the f64 composed result.
fn agree_f32(
    vars: &[Var],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
) -> Result<(), String> {
    let f64s: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let f32_vars: Vec<Var> = f64s.iter().map(|t| Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap()).collect();
    let f32s: Vec<Tensor> = f32_vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, yc) = (fused(&f32s), composed(&f64s));
    if yf.dtype() != DType::F32 {
        return Err(format!("f32 inputs gave {:?}", yf.dtype()));
    }
    let scale = values(&yc).iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&values(&yf), &values(&yc));
    if d > 1e-4 * scale {
        return Err(format!("f32 values differ by {d} (scale {scale})"));
    }
    let (gf, gc) = (weighted_sum(&yf).backward().unwrap(), weighted_sum(&yc).backward().unwrap());
    for (i, (v32, v64)) in f32_vars.iter().zip(vars).enumerate() {
        let (Some(a), Some(b)) = (gf.get(v32.as_tensor()), gc.get(v64.as_tensor())) else {
            return Err(format!("input {i}: an f32 or f64 gradient is missing"));
        };
        if a.dtype() != DType::F32 {
            return Err(format!("input {i}: the f32 backward gave {:?}", a.dtype()));
        }
        let (a, b) = (values(a), values(b));
        let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&a, &b);
        if d > 1e-3 * scale {
            return Err(format!("input {i}: f32 gradients differ by {d} (scale {scale})"));
        }
    }
    Ok(())
}

fn tables(seed: u64, t: usize, half: usize) -> (Tensor, Tensor) {
    // Real RoPE angles: position * inverse frequency.
    let theta = randn(&mut rng(seed), &[half], DType::F64).abs().unwrap();
    let pos = Tensor::arange(0u32, t as u32, &candle_core::Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let freqs = pos.unsqueeze(1).unwrap().broadcast_mul(&theta.unsqueeze(0).unwrap()).unwrap();
    (freqs.cos().unwrap(), freqs.sin().unwrap())
}

proptest! {
    #![proptest_config(proptest_config(10))]

    #[test]
    fn rms_norm(seed in 0u64..1000, rows in 1usize..5, d in 1usize..9) {
        let vars = [var(seed, &[rows, 2, d]), var(seed + 1, &[d])];
        let f = |t: &[Tensor]| fused::norm::rms_norm(&t[0], &t[1], 1e-5).unwrap();
        let c = |t: &[Tensor]| composed::rms_norm(&t[0], &t[1], 1e-5).unwrap();
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn layer_norm(seed in 0u64..1000, rows in 1usize..5, d in 2usize..9) {
        let vars = [var(seed, &[rows, 2, d]), var(seed + 1, &[d]), var(seed + 2, &[d])];
        // An eps that f32 holds exactly: candle's layer_norm_slow takes it as f32.
        let eps = 1.0 / 65536.0;
        let f = |t: &[Tensor]| fused::norm::layer_norm(&t[0], &t[1], &t[2], eps).unwrap();
        let c = |t: &[Tensor]| composed::layer_norm(&t[0], &t[1], &t[2], eps).unwrap();
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn swiglu(seed in 0u64..1000, n in 1usize..40) {
        let vars = [var(seed, &[2, n]), var(seed + 1, &[2, n])];
        let f = |t: &[Tensor]| fused::elementwise::swiglu(&t[0], &t[1]).unwrap();
        let c = |t: &[Tensor]| composed::swiglu(&t[0], &t[1]).unwrap();
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn gelu_new(seed in 0u64..1000, n in 1usize..40) {
        let vars = [var(seed, &[3, n])];
        let f = |t: &[Tensor]| fused::elementwise::gelu_new(&t[0]).unwrap();
        let c = |t: &[Tensor]| composed::gelu_new(&t[0]).unwrap();
        // candle's own gelu backward rounds its constants (0.797885, 0.0356774, ...), so it is
        // off by ~1e-7; ours uses the exact derivative, and finite differences hold it to 1e-6.
        agree_within(1e-6, &vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn rope(seed in 0u64..1000, b in 1usize..3, heads in 1usize..3, t in 1usize..6, half in 1usize..5) {
        let (cos, sin) = tables(seed + 7, t, half);
        let vars = [var(seed, &[b, heads, t, 2 * half])];
        let f = |x: &[Tensor]| fused::rope::rope(&x[0], &cos, &sin).unwrap();
        let c = |x: &[Tensor]| composed::rope(&x[0], &cos, &sin).unwrap();
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn causal_attention(seed in 0u64..1000, b in 1usize..3, kv_heads in 1usize..3, groups in 1usize..4,
                        t in 1usize..7, half in 1usize..4, with_rope in any::<bool>(),
                        window in proptest::option::of(1usize..9)) {
        // A window of 1..9 keys over 1..7 positions: shorter than the sequence, and as long or longer.
        let (heads, hd) = (kv_heads * groups, 2 * half);
        let (cos, sin) = tables(seed + 7, t, half);
        let rope = with_rope.then_some((&cos, &sin));
        let vars = [var(seed, &[b, t, heads * hd]), var(seed + 1, &[b, t, kv_heads * hd]), var(seed + 2, &[b, t, kv_heads * hd])];
        let f = |x: &[Tensor]| {
            let tables = rope.map(|(c, s)| fused::rope::RopeTables::from_tensors(c, s).unwrap());
            let op = fused::attention::CausalAttention { heads, kv_heads, head_dim: hd, rope: tables, window };
            fused::attention::causal_attention(&x[0], &x[1], &x[2], op).unwrap()
        };
        let c = |x: &[Tensor]| composed::self_attention(&x[0], &x[1], &x[2], heads, kv_heads, rope, window).unwrap();
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn lora_linear(seed in 0u64..1000, m in 1usize..6, i in 1usize..7, o in 1usize..7, r in 1usize..4, bias in any::<bool>()) {
        let w = randn(&mut rng(seed + 10), &[o, i], DType::F64);
        let bvec = bias.then(|| randn(&mut rng(seed + 11), &[o], DType::F64));
        let scale = 2.0 / r as f64;
        let vars = [var(seed, &[2, m, i]), var(seed + 1, &[r, i]), var(seed + 2, &[o, r])];
        let f = |x: &[Tensor]| {
            let (w, b) = (w.to_dtype(x[0].dtype()).unwrap(), bvec.as_ref().map(|b| b.to_dtype(x[0].dtype()).unwrap()));
            fused::lora_linear::lora_linear(&x[0], &w, b.as_ref(), &x[1], &x[2], scale).unwrap()
        };
        // Eq. 3 of the paper, composed: x W^T + b + scale * (x A^T) B^T.
        let c = |x: &[Tensor]| {
            let base = x[0].broadcast_matmul(&w.t().unwrap()).unwrap();
            let base = match &bvec { Some(b) => base.broadcast_add(b).unwrap(), None => base };
            let update = x[0].broadcast_matmul(&x[1].t().unwrap()).unwrap().broadcast_matmul(&x[2].t().unwrap()).unwrap();
            (base + (update * scale).unwrap()).unwrap()
        };
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn residual_linear(seed in 0u64..1000, m in 1usize..6, i in 1usize..7, o in 1usize..7, bias in any::<bool>()) {
        let w = randn(&mut rng(seed + 10), &[o, i], DType::F64);
        let bvec = bias.then(|| randn(&mut rng(seed + 11), &[o], DType::F64));
        let vars = [var(seed, &[2, m, o]), var(seed + 1, &[2, m, i])];
        let f = |x: &[Tensor]| {
            let (w, b) = (w.to_dtype(x[0].dtype()).unwrap(), bvec.as_ref().map(|b| b.to_dtype(x[0].dtype()).unwrap()));
            fused::residual_linear::residual_linear(&x[0], &x[1], &w, b.as_ref()).unwrap()
        };
        let c = |x: &[Tensor]| {
            let y = x[1].broadcast_matmul(&w.t().unwrap()).unwrap();
            let y = match &bvec { Some(b) => y.broadcast_add(b).unwrap(), None => y };
            (&x[0] + y).unwrap()
        };
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn head_cross_entropy(seed in 0u64..1000, n in 1usize..300, vocab in 2usize..40, d in 1usize..6) {
        // n up to 300 crosses the op's 128-row chunks.
        let targets: Vec<u32> = (0..n).map(|i| ((seed as usize * 7 + i * 13) % vocab) as u32).collect();
        let vars = [var(seed, &[n, d]), var(seed + 1, &[vocab, d])];
        let f = |x: &[Tensor]| fused::cross_entropy::head_cross_entropy(&x[0], &x[1], &targets).unwrap();
        let c = |x: &[Tensor]| {
            let logits = x[0].matmul(&x[1].t().unwrap()).unwrap();
            ops::cross_entropy(&logits, &Tensor::new(targets.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap()
        };
        agree(&vars, f, c).map_err(TestCaseError::fail)?;
        agree_f32(&vars, f, c).map_err(TestCaseError::fail)?;
    }
}

/// Once at a real model's sizes, not only at tiny random ones: attention with head_dim 64 over 64
/// positions with 3 query heads per key/value head (SmolLM2's grouping), and the head + loss over
/// 300 rows, more than two of its 128-row chunks. Values, gradients (f64 and f32) and finite
/// differences.
#[test]
fn fused_ops_agree_at_realistic_sizes() {
    let (b, t, kv_heads, heads, hd) = (1, 64, 1, 3, 64);
    let (cos, sin) = tables(11, t, hd / 2);
    let vars = [var(1, &[b, t, heads * hd]), var(2, &[b, t, kv_heads * hd]), var(3, &[b, t, kv_heads * hd])];
    let f = |x: &[Tensor]| {
        let rope = Some(fused::rope::RopeTables::from_tensors(&cos, &sin).unwrap());
        let op = fused::attention::CausalAttention { heads, kv_heads, head_dim: hd, rope, window: None };
        fused::attention::causal_attention(&x[0], &x[1], &x[2], op).unwrap()
    };
    let c = |x: &[Tensor]| {
        composed::self_attention(&x[0], &x[1], &x[2], heads, kv_heads, Some((&cos, &sin)), None).unwrap()
    };
    agree(&vars, f, c).unwrap();
    agree_f32(&vars, f, c).unwrap();

    let (n, vocab, d) = (300, 97, 64);
    let targets: Vec<u32> = (0..n).map(|i| ((i * 31) % vocab) as u32).collect();
    let vars = [var(4, &[n, d]), var(5, &[vocab, d])];
    let f = |x: &[Tensor]| fused::cross_entropy::head_cross_entropy(&x[0], &x[1], &targets).unwrap();
    let c = |x: &[Tensor]| {
        let logits = x[0].matmul(&x[1].t().unwrap()).unwrap();
        ops::cross_entropy(&logits, &Tensor::new(targets.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap()
    };
    agree(&vars, f, c).unwrap();
    agree_f32(&vars, f, c).unwrap();
}

/// A frozen weight (a plain tensor, not a `Var`) gets no gradient from the fused ops: neither
/// computed nor stored.
#[test]
fn frozen_inputs_get_no_gradient() {
    let x = var(1, &[4, 6]);
    let w = randn(&mut rng(2), &[6], DType::F64);
    let b = randn(&mut rng(3), &[6], DType::F64);
    let head = randn(&mut rng(4), &[9, 6], DType::F64);
    let y = fused::norm::rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
    let y = fused::norm::layer_norm(&y, &w, &b, 1e-5).unwrap();
    let loss = fused::cross_entropy::head_cross_entropy(&y, &head, &[0, 3, 8, 1]).unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some(), "the input still gets its gradient");
    for (name, t) in [("rms weight", &w), ("ln bias", &b), ("head", &head)] {
        assert!(grads.get(t).is_none(), "{name}: a gradient was computed for a frozen tensor");
    }
}

/// The dispatching functions in `ops` take the fused ops on the CPU: constants (a frozen norm
/// weight, the RoPE tables, a frozen head) end up with no gradient, where the composed versions
/// compute and keep one for each.
#[test]
fn ops_take_the_fused_versions_on_the_cpu() {
    let x = Var::from_tensor(&randn(&mut rng(5), &[2, 3, 8], DType::F32)).unwrap();
    let w = randn(&mut rng(6), &[8], DType::F32);
    let head = randn(&mut rng(7), &[11, 8], DType::F32);
    let (cos, sin) = tables(8, 3, 2);
    let (cos, sin) = (cos.to_dtype(DType::F32).unwrap(), sin.to_dtype(DType::F32).unwrap());
    let forward = |norm: &dyn Fn(&Tensor) -> Tensor, attn: &dyn Fn(&Tensor) -> Tensor| {
        let h = attn(&norm(x.as_tensor()));
        let h = h.reshape((6, 8)).unwrap();
        ops::head_cross_entropy(&h, &head, &[1, 2, 3, 4, 5, 10]).unwrap().backward().unwrap()
    };
    let grads = forward(&|t| ops::rms_norm(t, &w, 1e-6).unwrap(), &|t| {
        ops::self_attention(t, t, t, 2, 2, Some((&cos, &sin)), None).unwrap()
    });
    assert!(grads.get(x.as_tensor()).is_some());
    for (name, t) in [("norm weight", &w), ("head", &head), ("cos", &cos), ("sin", &sin)] {
        assert!(grads.get(t).is_none(), "{name} got a gradient: the composed op ran");
    }
    // The composed versions compute and keep gradients for the constants' broadcast views and
    // for every intermediate node: many more entries than the fused ops' one per input.
    let composed_grads = forward(&|t| composed::rms_norm(t, &w, 1e-6).unwrap(), &|t| {
        composed::self_attention(t, t, t, 2, 2, Some((&cos, &sin)), None).unwrap()
    });
    let count = |g: &candle_core::backprop::GradStore| g.get_ids().count();
    assert!(count(&grads) < count(&composed_grads), "{} vs {}", count(&grads), count(&composed_grads));
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let q = randn(&mut rng(1), &[1, 4, 8], DType::F32);
    let k = randn(&mut rng(2), &[1, 3, 4], DType::F32);
    let op = fused::attention::CausalAttention { heads: 2, kv_heads: 1, head_dim: 4, rope: None, window: None };
    let err = fused::attention::causal_attention(&q, &k, &k, op).unwrap_err().to_string();
    assert!(err.contains("attention") && err.contains("[1, 3, 4]"), "{err}");
    let h = randn(&mut rng(3), &[2, 4], DType::F32);
    let w = randn(&mut rng(4), &[5, 4], DType::F32);
    let err = fused::cross_entropy::head_cross_entropy(&h, &w, &[0, 5]).unwrap_err().to_string();
    assert!(err.contains("target 5") && err.contains("vocabulary of 5"), "{err}");
    let a = randn(&mut rng(5), &[2, 3], DType::F32);
    let err = fused::lora_linear::lora_linear(&h, &w, None, &a, &a, 1.0).unwrap_err().to_string();
    assert!(err.contains("lora-linear"), "{err}");
}
