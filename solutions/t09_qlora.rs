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

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::{LoraError, Result};

/// Weights per absmax block (the paper's and bitsandbytes' block size).
pub const NF4_BLOCK: usize = 64;
/// Absmax constants per block of the second quantization.
pub const ABSMAX_BLOCK: usize = 256;

// ANCHOR: code_book
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
    let offset = 1.0 - 0.5 * (1.0 / 30.0 + 1.0 / 32.0);
    let top = normal_quantile(offset);
    // `n` probabilities evenly spaced from `offset` to 0.5, the last (0.5, the median) dropped.
    let spaced = |n: usize| (0..n - 1).map(move |i| offset + (0.5 - offset) * i as f64 / (n - 1) as f64);
    let mut levels: Vec<f64> = spaced(9).map(|p| normal_quantile(p) / top).collect();
    levels.extend(spaced(8).map(|p| -normal_quantile(p) / top));
    levels.push(0.0);
    levels.sort_by(f64::total_cmp);
    std::array::from_fn(|i| levels[i] as f32)
}
// ANCHOR_END: code_book

// ANCHOR: nearest
/// The index of the level nearest to `v` (in [-1, 1]); ties go to the lower level.
pub fn nearest_level(code_book: &[f32; 16], v: f32) -> u8 {
    // The levels are sorted, so the nearest is the first whose midpoint with the next is >= v.
    for i in 0..15 {
        if v <= 0.5 * (code_book[i] + code_book[i + 1]) {
            return i as u8;
        }
    }
    15
}
// ANCHOR_END: nearest

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
    // ANCHOR: quantize
    /// Quantize a tensor of any shape. Non-finite values or an empty tensor are an error.
    pub fn quantize(t: &Tensor) -> Result<Self> {
        let values = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        if values.is_empty() {
            return Err(LoraError::config("NF4 quantization", "the tensor is empty"));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(LoraError::config("NF4 quantization", format!("element {i} is {}", values[i])));
        }
        let book = nf4_code_book();
        let zero = nearest_level(&book, 0.0);
        // First quantization: per block, absmax and the nearest level of every value / absmax.
        let blocks: Vec<(f32, Vec<u8>)> = values
            .par_chunks(NF4_BLOCK)
            .map(|block| {
                let absmax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let idx = block.iter().map(|&v| if absmax == 0.0 { zero } else { nearest_level(&book, v / absmax) });
                (absmax, idx.collect())
            })
            .collect();
        let mut indices: Vec<u8> = blocks.iter().flat_map(|(_, idx)| idx.iter().copied()).collect();
        if indices.len() % 2 == 1 {
            indices.push(zero);
        }
        let codes = indices.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
        // Second quantization: the absmax constants, centred, to 8 bits in blocks of 256.
        let absmax: Vec<f32> = blocks.iter().map(|(a, _)| *a).collect();
        let absmax_mean = (absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / absmax.len() as f64) as f32;
        let mut absmax_q = Vec::with_capacity(absmax.len());
        let mut absmax_scale = Vec::with_capacity(absmax.len().div_ceil(ABSMAX_BLOCK));
        for group in absmax.chunks(ABSMAX_BLOCK) {
            let scale = group.iter().fold(0f32, |m, &a| m.max((a - absmax_mean).abs()));
            absmax_scale.push(scale);
            absmax_q.extend(group.iter().map(|&a| {
                if scale == 0.0 {
                    0
                } else {
                    (127.0 * (a - absmax_mean) / scale).round().clamp(-127.0, 127.0) as i8
                }
            }));
        }
        Ok(Nf4Tensor { shape: t.dims().to_vec(), codes, absmax_q, absmax_scale, absmax_mean })
    }
    // ANCHOR_END: quantize

    /// The absmax of block `b` as dequantized from its 8-bit code.
    pub fn block_absmax(&self, b: usize) -> f32 {
        f32::from(self.absmax_q[b]) / 127.0 * self.absmax_scale[b / ABSMAX_BLOCK] + self.absmax_mean
    }

    // ANCHOR: dequantize
    /// The f32 values back, in the original shape, on `device`.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        let book = nf4_code_book();
        let n = self.elem_count();
        let mut out = vec![0f32; n];
        out.par_chunks_mut(NF4_BLOCK).enumerate().for_each(|(b, block)| {
            let absmax = self.block_absmax(b);
            for (j, v) in block.iter_mut().enumerate() {
                let i = b * NF4_BLOCK + j;
                let byte = self.codes[i / 2];
                let index = if i.is_multiple_of(2) { byte >> 4 } else { byte & 0x0f };
                *v = book[index as usize] * absmax;
            }
        });
        Ok(Tensor::from_vec(out, self.shape.as_slice(), device)?)
    }
    // ANCHOR_END: dequantize

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
        self.codes.len() + self.absmax_q.len() + 4 * self.absmax_scale.len() + 4
    }

    /// Storage bits per weight: about 4.127 for a large tensor.
    pub fn bits_per_parameter(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / self.elem_count() as f64
    }
}
