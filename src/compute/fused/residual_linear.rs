//! A frozen linear layer and the residual connection after it as one op:
//! `y = h + x W^T (+ b)`, as in `h = h + o_proj(attn)` and `h = h + down_proj(mlp)`.
//!
//! Composed, the layer's output `x W^T` is a tensor of its own that the addition keeps alive for
//! the backward, though an addition's backward needs neither input: one [tokens, d] tensor per
//! residual, two per layer. Fused, only `x` and `h` are kept (they are kept anyway), and the
//! backward is `dx = dy W`, `dh = dy`; W and b get no gradient.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::{by_dtype, owned, storage_slice, tensor, with_slice, Float, FrozenWeight, Product};

/// The frozen weight [out, in] and bias [out].
#[derive(Clone, Debug)]
struct ResidualLinear {
    pub weight: FrozenWeight,
    pub bias: Option<Tensor>,
}

impl ResidualLinear {
    fn dims(&self, x: &[usize], h: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        let (out_f, in_f) = self.weight.dims()?;
        let m = x.iter().product::<usize>() / in_f.max(1);
        let same_rows = x.len() == h.len() && x[..x.len() - 1] == h[..h.len() - 1];
        if x.last() != Some(&in_f) || h.last() != Some(&out_f) || !same_rows {
            candle_core::bail!("residual-linear: expected x [..., {in_f}] and h [..., {out_f}] with the same rows, got {x:?} and {h:?}");
        }
        Ok((m, in_f, out_f))
    }
}

fn fwd<T: Float>(
    op: &ResidualLinear,
    x: &CpuStorage,
    xl: &Layout,
    h: &CpuStorage,
    hl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (m, _, out_f) = op.dims(xl.dims(), hl.dims())?;
    let x = storage_slice::<T>(x, xl)?;
    // y starts as h and the matmul accumulates into it.
    let mut y = storage_slice::<T>(h, hl)?.to_vec();
    op.weight.matmul_into(&mut y, x, m, Product::XWt, true)?;
    if let Some(b) = &op.bias {
        with_slice::<T, _>(b, |b| {
            y.chunks_mut(out_f).for_each(|row| row.iter_mut().zip(b).for_each(|(y, &b)| *y += b))
        })?;
    }
    Ok((owned(y), hl.shape().clone()))
}

fn bwd<T: Float>(op: &ResidualLinear, x: &Tensor, h: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let (m, in_f, _) = op.dims(x.dims(), h.dims())?;
    let dy = dy.to_dtype(x.dtype())?.contiguous()?;
    let dx = with_slice::<T, _>(&dy, |dy| {
        let mut dx = vec![T::zero(); m * in_f];
        op.weight.matmul_into(&mut dx, dy, m, Product::XW, false).map(|()| dx)
    })??;
    Ok((tensor(dx, x.dims())?, dy))
}

impl CustomOp2 for ResidualLinear {
    fn name(&self) -> &'static str {
        "fused-residual-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        h: &CpuStorage,
        hl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, fwd(self, x, xl, h, hl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        h: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dh) = match x.dtype() {
            candle_core::DType::F32 => bwd::<f32>(self, x, h, dy)?,
            _ => bwd::<f64>(self, x, h, dy)?,
        };
        Ok((x.track_op().then_some(dx), h.track_op().then_some(dh)))
    }
}

/// `h + x W^T + b` for a frozen W [out, in] and b \[out\], as one op.
pub fn residual_linear(h: &Tensor, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    residual_linear_with(h, x, FrozenWeight::dense_from(weight)?, bias)
}

/// [`residual_linear`] over a frozen weight that may be quantized (QLoRA).
pub(crate) fn residual_linear_with(
    h: &Tensor,
    x: &Tensor,
    weight: FrozenWeight,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let op = ResidualLinear { weight, bias: bias.map(|b| b.detach().contiguous()).transpose()? };
    x.contiguous()?.apply_op2_arc(&h.contiguous()?, std::sync::Arc::new(Box::new(op)))
}
