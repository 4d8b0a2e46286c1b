//! The frozen linear `x W^T`, whose backward returns only the input's gradient.
//!
//! candle's backward of `x.matmul(w)` computes the gradient of both operands, and for a frozen
//! weight that second matmul is wasted work (a third of a linear layer's training cost) and a
//! weight-sized tensor kept alive. This op holds the weight (dense, or quantized and dequantized
//! on the fly), so it has one input and keeps nothing else alive.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use super::FrozenWeight;

/// `x W^T` for a weight that gets no gradient, as one op whose backward computes only the input
/// gradient `dy W`. Holds the weight, so the op has one input and keeps nothing else alive.
struct FrozenLinear {
    weight: FrozenWeight,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let weight = self.weight.dense(x.dtype())?;
        let (out_f, in_f) = weight.dims2()?;
        let dims = x_l.dims();
        let m = x_l.shape().elem_count() / in_f;
        // The caller made x contiguous, so it can be read as a [m, in] matrix.
        let x2 = Layout::contiguous_with_offset((m, in_f), x_l.start_offset());
        let (w_storage, w_l) = weight.storage_and_layout();
        let Storage::Cpu(w) = &*w_storage else { candle_core::bail!("frozen-linear: the weight is not on the CPU") };
        // W^T is W's layout with the two dims swapped: [in, out] with strides [1, in].
        let wt = w_l.transpose(0, 1)?;
        let y = x.matmul(w, (1, m, out_f, in_f), &x2, &wt)?;
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("x has at least one dim") = out_f;
        Ok((y, Shape::from(out_dims)))
    }

    // ANCHOR: frozen_bwd
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dL/dx = dL/dy W; no dL/dW: the weight is frozen.
        Ok(Some(grad_y.broadcast_matmul(&self.weight.dense(grad_y.dtype())?)?))
    }
    // ANCHOR_END: frozen_bwd
}

/// `x W^T` as one [`FrozenLinear`] op (CPU, f32/f64; the caller checks).
pub fn frozen_linear(x: &Tensor, weight: FrozenWeight) -> candle_core::Result<Tensor> {
    let op = FrozenLinear { weight };
    x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(op)))
}
