//! `exp` over a row of logits, sixteen at a time.
//!
//! The head's softmax takes two exponentials per logit, 100 million per SmolLM2 step (1024
//! positions x 49,152 tokens), SwiGLU's sigmoid one per MLP activation in the forward and again
//! in the backward, attention one per score; libm's `expf`, one value per call, was 10 % of a
//! bf16 training step.
//! On AVX-512 CPUs the f32 rows go through Cephes' `expf` (a range reduction to
//! `x = n ln 2 + r`, a degree-6 polynomial for `e^r`, then `2^n` put into the exponent bits),
//! written so that the compiler vectorizes it: within 2 ulp of libm's, NaN stays NaN, and below
//! -87 it is 0. f64, and CPUs without AVX-512, keep libm's `exp`.

use candle_core::DType;

use super::{as_f32, as_f32_mut, Float};

/// `sum_i exp(row_i - shift)`.
pub(crate) fn sum_exp<T: Float>(row: &[T], shift: T) -> T {
    if T::DTYPE == DType::F32 && avx512() {
        let shift = <T as candle_core::WithDType>::to_f64(shift) as f32;
        // SAFETY: the CPU has AVX-512F (checked).
        let s = unsafe { sum_exp_avx512(as_f32(row), shift) };
        return <T as candle_core::WithDType>::from_f64(s as f64);
    }
    row.iter().map(|&v| (v - shift).exp()).sum()
}

/// `row_i = exp(row_i - shift) * scale`.
pub(crate) fn exp_scaled<T: Float>(row: &mut [T], shift: T, scale: T) {
    if T::DTYPE == DType::F32 && avx512() {
        let to = |v: T| <T as candle_core::WithDType>::to_f64(v) as f32;
        // SAFETY: the CPU has AVX-512F (checked).
        unsafe { exp_scaled_avx512(as_f32_mut(row), to(shift), to(scale)) };
        return;
    }
    row.iter_mut().for_each(|v| *v = (*v - shift).exp() * scale);
}

/// `dst_i = exp(-src_i)` (the sigmoid's `e^-x`).
pub(crate) fn exp_neg<T: Float>(src: &[T], dst: &mut [T]) {
    assert_eq!(src.len(), dst.len(), "exp_neg: lengths");
    if T::DTYPE == DType::F32 && avx512() {
        // SAFETY: the CPU has AVX-512F (checked).
        unsafe { exp_neg_avx512(as_f32(src), as_f32_mut(dst)) };
        return;
    }
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = (-s).exp());
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Cephes' `expf`, branch-free so that a loop of it vectorizes.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n ln 2 is subtracted without rounding error.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // `clamp` keeps NaN as NaN.
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * C1 - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5e-1;
    let e = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        e * two_n
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_exp_avx512(row: &[f32], shift: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp_f32(v - shift)).sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += exp_f32(v - shift);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn sum_exp_avx512(row: &[f32], shift: f32) -> f32 {
    row.iter().map(|&v| (v - shift).exp()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_scaled_avx512(row: &mut [f32], shift: f32, scale: f32) {
    for v in row.iter_mut() {
        *v = exp_f32(*v - shift) * scale;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_neg_avx512(src: &[f32], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = exp_f32(-s);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_neg_avx512(src: &[f32], dst: &mut [f32]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = (-s).exp());
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn exp_scaled_avx512(row: &mut [f32], shift: f32, scale: f32) {
    row.iter_mut().for_each(|v| *v = (*v - shift).exp() * scale);
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    /// Within 2 ulp of libm's expf over the range a softmax meets, 0 below -87, NaN kept.
    #[test]
    fn close_to_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x), x.exp());
            assert!((got - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, libm {want}");
            x += 0.0137;
        }
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
