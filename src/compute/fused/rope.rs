//! Rotary position embedding (Su et al. 2021) in Hugging Face's "rotate half" layout, as one op
//! whose cos/sin tables live inside it: they are constants, so no gradient is computed for them
//! (candle's composed `rope_slow` computes and keeps one).
//!
//! Each head vector is split into halves `(x1, x2)` and rotated by the position's angles:
//! `y1 = x1 cos - x2 sin`, `y2 = x2 cos + x1 sin`. A rotation's transpose is its inverse, so the
//! backward is the same rotation with `sin` negated.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, owned, storage_slice, tensor, with_slice, Float};

/// cos and sin of every (position, frequency) pair: [seq, head_dim / 2] each, row-major.
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
    pub half: usize,
}

impl RopeTables {
    /// Tables from candle tensors [seq, head_dim / 2].
    pub fn from_tensors(cos: &Tensor, sin: &Tensor) -> candle_core::Result<Self> {
        let (_, half) = cos.dims2()?;
        let cos = cos.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
        let sin = sin.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1()?;
        Ok(RopeTables { cos, sin, half })
    }

    /// Rotate one head vector `x` [2 * half] at position `pos` in place; `inverse` rotates back
    /// (the backward).
    pub(crate) fn rotate<T: Float>(&self, x: &mut [T], pos: usize, inverse: bool) {
        let h = self.half;
        let (cos, sin) = (&self.cos[pos * h..(pos + 1) * h], &self.sin[pos * h..(pos + 1) * h]);
        for i in 0..h {
            let c = <T as candle_core::WithDType>::from_f64(cos[i]);
            let s = <T as candle_core::WithDType>::from_f64(if inverse { -sin[i] } else { sin[i] });
            let (a, b) = (x[i], x[i + h]);
            x[i] = a * c - b * s;
            x[i + h] = b * c + a * s;
        }
    }

    fn seq(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotate every head vector of `x` [..., seq, 2 * half] (positions `0..seq`).
    fn apply<T: Float>(&self, x: &[T], inverse: bool) -> Vec<T> {
        let (hd, seq) = (2 * self.half, self.seq());
        let mut y = x.to_vec();
        y.par_chunks_mut(hd * seq).for_each(|block| {
            for (pos, row) in block.chunks_mut(hd).enumerate() {
                self.rotate(row, pos, inverse);
            }
        });
        y
    }
}

fn fwd<T: Float>(r: &RopeTables, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let dims = xl.dims();
    let (seq, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if hd != 2 * r.half || seq != r.seq() {
        candle_core::bail!("rope: input [..., {seq}, {hd}] does not match tables for [{}, {}]", r.seq(), 2 * r.half);
    }
    Ok((owned(r.apply(storage_slice::<T>(x, xl)?, false)), xl.shape().clone()))
}

fn bwd<T: Float>(r: &RopeTables, x: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    let dx = with_slice::<T, _>(&dy.to_dtype(x.dtype())?, |dy| r.apply(dy, true))?;
    tensor(dx, x.dims())
}

impl CustomOp1 for RopeTables {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, fwd(self, x, xl))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match x.dtype() {
            candle_core::DType::F32 => bwd::<f32>(self, x, dy)?,
            _ => bwd::<f64>(self, x, dy)?,
        }))
    }
}

/// RoPE of `x` [batch, heads, seq, head_dim] with `cos`, `sin` [seq, head_dim / 2], as one op.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let tables = RopeTables::from_tensors(cos, sin)?;
    x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(tables)))
}
