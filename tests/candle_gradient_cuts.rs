//! candle's fast fused ops (`softmax_last_dim`, `rms_norm`, `rope`) record no backward: a
//! training forward that uses them runs without an error and returns gradients that are silently
//! wrong. These tests pin that behaviour down (if candle ever adds the backward, they fail and the
//! book's chapter "candle for PyTorch users" needs its warning lifted) and show that the versions
//! in `lora_from_scratch::compute::ops` pass the same finite-difference check.

mod common;

use candle_core::{DType, Tensor, Var};
use common::{finite_difference_check, randn, rng};
use lora_from_scratch::compute::ops;

/// A residual around `f`, as in every transformer block: `loss = sum((x + f(x)) * w)`.
/// Through the residual the input still receives *a* gradient when `f` records no backward,
/// so nothing fails loudly: only the numbers are wrong.
fn residual_loss(f: impl Fn(&Tensor) -> Tensor, w: Tensor) -> impl Fn(&Tensor) -> Tensor {
    move |x: &Tensor| (x + f(x)).unwrap().mul(&w).unwrap().sum_all().unwrap()
}

// ANCHOR: silent_cut
#[test]
fn candle_softmax_last_dim_cuts_the_gradient_silently() {
    let mut r = rng(1);
    let x = Var::from_tensor(&randn(&mut r, &[3, 5], DType::F64)).unwrap();
    let w = randn(&mut r, &[3, 5], DType::F64);

    // Alone, the input gets no gradient at all ...
    let y = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
    let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_none());

    // ... and behind a residual it gets one that is wrong: only the residual's part.
    let fast = residual_loss(|x| candle_nn::ops::softmax_last_dim(x).unwrap(), w.clone());
    assert!(finite_difference_check(&x, fast, 15).is_err());

    // Composed from ops that each have a backward, the same softmax passes.
    let ours = residual_loss(|x| ops::composed::softmax_last(x).unwrap(), w);
    finite_difference_check(&x, ours, 15).unwrap();
}
// ANCHOR_END: silent_cut

#[test]
fn candle_rms_norm_cuts_the_gradient_silently() {
    let mut r = rng(2);
    let x = Var::from_tensor(&randn(&mut r, &[4, 6], DType::F64)).unwrap();
    let gamma = randn(&mut r, &[6], DType::F64);
    let w = randn(&mut r, &[4, 6], DType::F64);
    // candle's rms_norm takes no f64, so this one runs in f32 and shows the missing gradient.
    let x32 = Var::from_tensor(&x.to_dtype(DType::F32).unwrap()).unwrap();
    let y = candle_nn::ops::rms_norm(x32.as_tensor(), &gamma.to_dtype(DType::F32).unwrap(), 1e-5).unwrap();
    let grads = y.mul(&w.to_dtype(DType::F32).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x32.as_tensor()).is_none());
    let ours = residual_loss(|x| ops::rms_norm(x, &gamma, 1e-5).unwrap(), w);
    finite_difference_check(&x, ours, 24).unwrap();
}

#[test]
fn candle_rope_cuts_the_gradient_silently() {
    let mut r = rng(3);
    // [batch, heads, seq, head_dim], the layout candle's rope takes.
    let (t, hd) = (4, 8);
    let x = Var::from_tensor(&randn(&mut r, &[1, 2, t, hd], DType::F64)).unwrap();
    let angles = randn(&mut r, &[t, hd / 2], DType::F64);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let w = randn(&mut r, &[1, 2, t, hd], DType::F64);
    let fast = residual_loss(|x| candle_nn::rotary_emb::rope(&x.contiguous().unwrap(), &cos, &sin).unwrap(), w.clone());
    assert!(finite_difference_check(&x, fast, 64).is_err());
    let ours = residual_loss(|x| ops::rope(x, &cos, &sin).unwrap(), w);
    finite_difference_check(&x, ours, 64).unwrap();
}
