//! Frozen weights stored in fewer bits: the [`QuantizedWeight`] interface, and GGUF's block
//! formats kept as llama.cpp wrote them ([`GgufWeight`], SmolLM2's Q4_1 and Q8_0). QLoRA's NF4
//! (task t09) implements the same interface in `crate::qlora`.
//!
//! A leaf of `compute`: uses nothing of the crate but its error type.

use std::fmt;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{LoraError, Result};

/// A frozen weight [out, in] kept in a quantized form.
pub trait QuantizedWeight: fmt::Debug + Send + Sync {
    /// (out_features, in_features).
    fn dims(&self) -> (usize, usize);
    /// The weight as an f32 tensor [out, in] on `device`.
    fn dequantize(&self, device: &Device) -> Result<Tensor>;
    /// Bytes the quantized form takes.
    fn storage_bytes(&self) -> usize;
    /// The format's name: `nf4`, `q4_1`, `q8_0`, ...
    fn format(&self) -> String;
}

/// A weight in one of GGUF's block formats, as llama.cpp wrote it.
#[derive(Debug)]
pub struct GgufWeight(pub QTensor);

impl QuantizedWeight for GgufWeight {
    fn dims(&self) -> (usize, usize) {
        let d = self.0.shape().dims();
        (d[0], d[1])
    }

    fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(self.0.dequantize(device)?)
    }

    fn storage_bytes(&self) -> usize {
        self.0.storage_size_in_bytes()
    }

    fn format(&self) -> String {
        format!("{:?}", self.0.dtype()).to_lowercase()
    }
}

impl GgufWeight {
    /// The same weight with its rows reordered: row i of the result is row `order[i]`. GGUF's
    /// block formats quantize along rows, so reordering rows moves whole blocks and is exact.
    pub fn permute_rows(&self, order: &[usize]) -> Result<Self> {
        let (rows, cols) = self.dims();
        let dtype: GgmlDType = self.0.dtype();
        if order.len() != rows || cols % dtype.block_size() != 0 {
            return Err(LoraError::config(
                "GGUF row permutation",
                format!("{} rows of {cols} for {rows}", order.len()),
            ));
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let data = self.0.data()?;
        let mut out = Vec::with_capacity(data.len());
        for &r in order {
            out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let storage = candle_core::quantized::QStorage::from_data(out.into(), &Device::Cpu, dtype)?;
        Ok(GgufWeight(QTensor::new(storage, (rows, cols))?))
    }
}
