//! Challenge 1 (t09): QLoRA's 4-bit NormalFloat (NF4) weights, with double quantization.
//!
//! Dettmers et al. 2023, "QLoRA" (arXiv 2305.14314), section 3. Pretrained weights are close to
//! normally distributed, so the 16 levels of a 4-bit code are put at quantiles of N(0, 1) rather
//! than evenly: each level then gets about the same share of the weights. A block of 64 weights
//! is scaled by its absolute maximum (absmax) into [-1, 1] and each weight stored as the index of
//! the nearest level, two indices per byte. The absmax constants (one f32 per 64 weights, half a
//! bit per weight) are quantized again ("double quantization"): centred on their mean and stored
//! as 8-bit integers in blocks of 256 with one f32 scale each, for 4 + 8/64 + 32/(64*256) =
//! 4.127 bits per weight. The quantized frozen linear that uses this lives in `crate::qlora::linear`.
//! Read book/src/t09_qlora.md beside this file. Grade it with `cargo test --features exercises --test t09_qlora`.
#![allow(unused_variables, unused_imports, unused_mut, dead_code)]

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{LoraError, Result};

/// Weights per absmax block (the paper's and bitsandbytes' block size).
pub const NF4_BLOCK: usize = 64;
/// Absmax constants per block of the second quantization.
pub const ABSMAX_BLOCK: usize = 256;

/// The standard normal's quantile function Φ⁻¹(p), by bisection on Φ(x) = (1 + erf(x/√2)) / 2:
/// slow but exact to f64 precision, and it only runs 15 times.
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * (1.0 + libm::erf(mid / std::f64::consts::SQRT_2)) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The NF4 code book: 16 levels in [-1, 1], ascending, with an exact 0.
///
/// 8 positive levels at quantiles evenly spaced in probability from `offset` down to (not
/// including) 0.5, 7 negative ones likewise, and 0; divided by the largest so that ±1 are levels.
/// The asymmetry (8 + 7 + 0) gives an exact zero, which padding and zero weights need. `offset`
/// is the midpoint between the outermost quantiles of 15 and of 16 equal bins, 1 - (1/30 +
/// 1/32) / 2, so that the extreme levels are not at infinity (bitsandbytes' `create_normal_map`).
pub fn nf4_code_book() -> [f32; 16] {
    // TODO: the 16 levels the doc comment describes, ascending, with an exact 0 and exactly -1 and
    // 1 (normal_quantile is given above): equal to bitsandbytes' NF4 table to 1e-6.
    // Book: "The code book" (the construction in symbols).
    todo!("t09: nf4_code_book")
}

/// The index of the level nearest to `v` (in [-1, 1]); ties go to the lower level.
pub fn nearest_level(code_book: &[f32; 16], v: f32) -> u8 {
    // TODO: the index (0..16) of the level closest to v; on a tie, the lower level.
    // Book: "Rounding to the nearest level".
    todo!("t09: nearest_level")
}

/// A tensor stored in NF4 with double-quantized absmax constants.
#[derive(Clone, Debug, PartialEq)]
pub struct Nf4Tensor {
    shape: Vec<usize>,
    /// Level indices, two per byte: element 2i in the high nibble, 2i + 1 in the low one
    /// (bitsandbytes' order). An odd count pads the last low nibble with the index of 0.
    codes: Vec<u8>,
    /// One per block of 64: round(127 * (absmax - absmax_mean) / absmax_scale[block / 256]).
    absmax_q: Vec<i8>,
    /// One per 256 absmax constants: the largest |absmax - absmax_mean| among them.
    absmax_scale: Vec<f32>,
    /// The mean of all absmax constants, subtracted so that the 8-bit code is used symmetrically.
    absmax_mean: f32,
}

impl Nf4Tensor {
    /// Quantize a tensor of any shape. Non-finite values or an empty tensor are an error.
    pub fn quantize(t: &Tensor) -> Result<Self> {
        // TODO: the fields above from `t`'s values in flat order. Blocks of NF4_BLOCK values, each
        // scaled by its absmax (max |v|), every value stored as the index of the nearest level (a
        // block of zeros: the index of level 0); indices packed two per byte, first in the high
        // nibble, an odd count padded with the index of 0. The absmax constants double quantized as
        // the field docs say, in groups of ABSMAX_BLOCK (a code of 0 when a group's scale is 0). An
        // empty tensor or a non-finite value is a `LoraError::config` error. The packed bytes must
        // equal bitsandbytes' for the same tensor.
        // Book: "Quantizing a tensor", "Double quantization".
        todo!("t09: Nf4Tensor::quantize")
    }

    /// The absmax of block `b` as dequantized from its 8-bit code.
    pub fn block_absmax(&self, b: usize) -> f32 {
        // TODO: block b's absmax as its 8-bit code gives it back: the inverse of the second
        // quantization.
        // Book: "Dequantizing".
        todo!("t09: Nf4Tensor::block_absmax")
    }

    /// The f32 values back, in the original shape, on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        // TODO: an f32 tensor of the original shape on `device`, element i of block b being the
        // level of its index times block_absmax(b).
        // Book: "Dequantizing".
        todo!("t09: Nf4Tensor::dequantize")
    }

    /// The original shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of weights.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The packed level indices, two per byte.
    pub fn packed_codes(&self) -> &[u8] {
        &self.codes
    }

    /// Bytes this tensor takes: the packed codes, the 8-bit absmax codes, their f32 scales and
    /// the one f32 mean.
    pub fn storage_bytes(&self) -> usize {
        // TODO: the bytes of every field that holds data: the packed codes, the absmax codes, their
        // f32 scales and the f32 mean.
        // Book: "Bits per parameter".
        todo!("t09: Nf4Tensor::storage_bytes")
    }

    /// Storage bits per weight: about 4.127 for a large tensor.
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.elem_count() as f64
    }
}
