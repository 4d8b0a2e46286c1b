//! A LoRA-adapted linear layer (Hu et al. 2021, eq. 3) as one op:
//! `y = x W0^T + b + s (x A^T) B^T` for inputs `x`, `A` [r, in], `B` [out, r], with the frozen W0
//! and b held inside the op (no gradient is ever computed for them).
//!
//! Composed in candle, the adapted layer is five nodes (base matmul, A, B, scale, add) that keep
//! three [tokens, out] tensors alive; fused, it keeps its inputs and output, and recomputes the
//! r-wide bottleneck `z = x A^T` in the backward (r = 8: a few percent of the base matmul).
//!
//! ```text
//! dB = s dY^T z      dz = s dY B      dA = dz^T x      dx = dY W0 + dz A
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::{by_dtype, matmul, owned, storage_slice, tensor, with_slice, Float, FrozenWeight, Mat, Product};

/// The frozen part of the layer and the adapter's scaling.
#[derive(Clone, Debug)]
struct LoraLinear {
    /// W0 [out, in] on the CPU, dense or quantized.
    pub weight: FrozenWeight,
    /// b [out].
    pub bias: Option<Tensor>,
    /// `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f64,
}

fn s<T: Float>(v: f64) -> T {
    <T as candle_core::WithDType>::from_f64(v)
}

impl LoraLinear {
    fn dims(&self, x: &[usize], a: &[usize], b: &[usize]) -> candle_core::Result<(usize, usize, usize, usize)> {
        let (out_f, in_f) = self.weight.dims()?;
        let m = x.iter().product::<usize>() / in_f.max(1);
        match (x.last(), a, b) {
            (Some(&i), &[r, i2], &[o, r2]) if i == in_f && i2 == in_f && o == out_f && r == r2 => {
                Ok((m, in_f, out_f, r))
            }
            _ => candle_core::bail!(
                "lora-linear: expected x [..., {in_f}], A [r, {in_f}], B [{out_f}, r], got {x:?}, {a:?}, {b:?}"
            ),
        }
    }

    fn forward<T: Float>(
        &self,
        x: &[T],
        a: &[T],
        b: &[T],
        (m, in_f, out_f, r): (usize, usize, usize, usize),
    ) -> candle_core::Result<Vec<T>> {
        let mut y = vec![T::zero(); m * out_f];
        self.weight.matmul_into(&mut y, x, m, Product::XWt, false)?;
        if let Some(bias) = &self.bias {
            with_slice::<T, _>(bias, |bias| {
                for row in y.chunks_mut(out_f) {
                    row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b);
                }
            })?;
        }
        // y += (s z) B^T with z = x A^T.
        let mut z = vec![T::zero(); m * r];
        matmul(&mut z, r, (m, r, in_f), Mat::rows(x, in_f), Mat::rows(a, in_f).t(), false, true);
        z.iter_mut().for_each(|v| *v *= s(self.scale));
        matmul(&mut y, out_f, (m, out_f, r), Mat::rows(&z, r), Mat::rows(b, r).t(), true, true);
        Ok(y)
    }

    fn backward<T: Float>(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let (m, in_f, out_f, r) = self.dims(x.dims(), a.dims(), b.dims())?;
        let dy = dy.to_dtype(x.dtype())?;
        let scale: T = s(self.scale);
        let (dx, da, db) = with_slice::<T, _>(x, |x| {
            with_slice::<T, _>(a, |a| {
                with_slice::<T, _>(b, |b| {
                    with_slice::<T, _>(&dy, |dy| -> candle_core::Result<_> {
                        // ANCHOR: backward
                        let mut z = vec![T::zero(); m * r];
                        matmul(&mut z, r, (m, r, in_f), Mat::rows(x, in_f), Mat::rows(a, in_f).t(), false, true);
                        z.iter_mut().for_each(|v| *v *= scale);
                        // dB = dY^T (s z)
                        let mut db = vec![T::zero(); out_f * r];
                        matmul(&mut db, r, (out_f, r, m), Mat::rows(dy, out_f).t(), Mat::rows(&z, r), false, true);
                        // dz = s dY B
                        let mut dz = vec![T::zero(); m * r];
                        matmul(&mut dz, r, (m, r, out_f), Mat::rows(dy, out_f), Mat::rows(b, r), false, true);
                        dz.iter_mut().for_each(|v| *v *= scale);
                        // dA = dz^T x
                        let mut da = vec![T::zero(); r * in_f];
                        matmul(&mut da, in_f, (r, in_f, m), Mat::rows(&dz, r).t(), Mat::rows(x, in_f), false, true);
                        // dx = dY W0 + dz A
                        let mut dx = vec![T::zero(); m * in_f];
                        self.weight.matmul_into(&mut dx, dy, m, Product::XW, false)?;
                        matmul(&mut dx, in_f, (m, in_f, r), Mat::rows(&dz, r), Mat::rows(a, in_f), true, true);
                        // ANCHOR_END: backward
                        Ok((dx, da, db))
                    })
                })
            })
        })?????;
        Ok([
            x.track_op().then(|| tensor(dx, x.dims())).transpose()?,
            a.track_op().then(|| tensor(da, &[r, in_f])).transpose()?,
            b.track_op().then(|| tensor(db, &[out_f, r])).transpose()?,
        ])
    }
}

fn fwd<T: Float>(
    op: &LoraLinear,
    x: &CpuStorage,
    xl: &Layout,
    a: &CpuStorage,
    al: &Layout,
    b: &CpuStorage,
    bl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let dims = op.dims(xl.dims(), al.dims(), bl.dims())?;
    let y = op.forward(storage_slice::<T>(x, xl)?, storage_slice::<T>(a, al)?, storage_slice::<T>(b, bl)?, dims)?;
    let mut out_dims = xl.dims().to_vec();
    *out_dims.last_mut().expect("x has a last dim") = dims.2;
    Ok((owned(y), Shape::from(out_dims)))
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, fwd(self, x, xl, a, al, b, bl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, da, db] = match x.dtype() {
            candle_core::DType::F32 => self.backward::<f32>(x, a, b, dy)?,
            _ => self.backward::<f64>(x, a, b, dy)?,
        };
        Ok((dx, da, db))
    }
}

/// `x W0^T + b + scale (x A^T) B^T` as one op; W0 and b get no gradient.
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    lora_linear_with(x, FrozenWeight::dense_from(weight)?, bias, a, b, scale)
}

/// [`lora_linear`] over a frozen weight that may be quantized (QLoRA).
pub(crate) fn lora_linear_with(
    x: &Tensor,
    weight: FrozenWeight,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let op = LoraLinear { weight, bias: bias.map(|b| b.detach().contiguous()).transpose()?, scale };
    x.contiguous()?.apply_op3_arc(&a.contiguous()?, &b.contiguous()?, std::sync::Arc::new(Box::new(op)))
}
