//! The frozen linear `x W^T`, whose backward returns only the input's gradient.
//!
//! candle's backward of `x.matmul(w)` computes the gradient of both operands, and for a frozen
//! weight that second matmul is wasted work (a third of a linear layer's training cost) and a
//! weight-sized tensor kept alive. This op holds the weight (dense, or quantized and dequantized
//! on the fly), so it has one input and keeps nothing else alive.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{by_dtype, owned, storage_slice, Float, FrozenWeight, Product};

/// `x W^T` for a weight that gets no gradient, as one op whose backward computes only the input
/// gradient `dy W`. Holds the weight, so the op has one input and keeps nothing else alive.
struct FrozenLinear {
    weight: FrozenWeight,
}

fn forward<T: Float>(op: &FrozenLinear, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let (out_f, in_f) = op.weight.dims()?;
    let m = x_l.shape().elem_count() / in_f;
    // The caller made x contiguous, so it can be read as a [m, in] matrix.
    let mut y = vec![T::zero(); m * out_f];
    op.weight.matmul_into(&mut y, storage_slice::<T>(x, x_l)?, m, Product::XWt, false)?;
    let mut out_dims = x_l.dims().to_vec();
    *out_dims.last_mut().expect("x has at least one dim") = out_f;
    Ok((owned(y), Shape::from(out_dims)))
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, forward(self, x, x_l))
    }

    // ANCHOR: frozen_bwd
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dL/dx = dL/dy W; no dL/dW: the weight is frozen. (A bf16 weight beside f32 gradients is
        // multiplied as it is stored, by the bf16 kernel.)
        if let Some(dx) = self.weight.bf16_times(grad_y, Product::XW)? {
            return Ok(Some(dx));
        }
        Ok(Some(grad_y.broadcast_matmul(&self.weight.dense(grad_y.dtype())?)?))
    }
    // ANCHOR_END: frozen_bwd
}

/// `x W^T` as one `FrozenLinear` op (CPU; f32/f64 activations, the weight of their dtype or
/// bf16 beside f32; the caller checks).
pub fn frozen_linear(x: &Tensor, weight: FrozenWeight) -> candle_core::Result<Tensor> {
    let op = FrozenLinear { weight };
    x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(op)))
}
