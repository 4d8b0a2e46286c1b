//! RMSNorm (Zhang & Sennrich 2019, Llama) and LayerNorm (Ba et al. 2016, GPT-2) over the last
//! dim, as single ops with a hand-written backward.
//!
//! Both normalize a row `x` to `x_hat = (x - mu) * r` with `r = 1 / sqrt(var + eps)` (RMSNorm:
//! `mu = 0`, `var = mean(x^2)`), then scale by `w` (and shift by `b`). With `g = dy * w` the
//! input gradient is
//!
//! ```text
//! dx = r * (g - mean(g) - x_hat * mean(g * x_hat))     (RMSNorm: without the mean(g) term)
//! ```
//!
//! and `dw = sum over rows of dy * x_hat`, `db = sum of dy`, computed only when the weight is
//! being trained. Nothing but `x` is kept: `r` is recomputed per row in the backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, owned, storage_slice, tensor, with_slice, Float};

fn f<T: Float>(v: f64) -> T {
    <T as candle_core::WithDType>::from_f64(v)
}

/// The normalization of one row: (mu, r).
fn stats<T: Float>(x: &[T], center: bool, eps: f64) -> (T, T) {
    let n: T = f(x.len() as f64);
    let mu = if center { x.iter().copied().sum::<T>() / n } else { T::zero() };
    let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() / n;
    (mu, T::one() / (var + f(eps)).sqrt())
}

/// A norm over the last dim: RMSNorm (`center: false`) or LayerNorm (`center: true`).
#[derive(Clone, Copy, Debug)]
struct Norm {
    pub eps: f64,
    pub center: bool,
}

impl Norm {
    fn forward<T: Float>(&self, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        let d = w.len();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            let (mu, r) = stats(xr, self.center, self.eps);
            for (j, (y, &x)) in yr.iter_mut().zip(xr).enumerate() {
                *y = (x - mu) * r * w[j] + b.map_or(T::zero(), |b| b[j]);
            }
        });
        y
    }

    /// dx, and dw / db when asked for.
    fn backward<T: Float>(&self, x: &[T], w: &[T], dy: &[T], want_dw: bool, want_db: bool) -> Grads<T> {
        let d = w.len();
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(d).zip(x.par_chunks(d)).zip(dy.par_chunks(d)).for_each(|((dxr, xr), dyr)| {
            let (mu, r) = stats(xr, self.center, self.eps);
            let n: T = f(d as f64);
            let (mut mean_g, mut mean_gx) = (T::zero(), T::zero());
            for j in 0..d {
                let g = dyr[j] * w[j];
                mean_g += g;
                mean_gx += g * (xr[j] - mu) * r;
            }
            let (mean_g, mean_gx) = (if self.center { mean_g / n } else { T::zero() }, mean_gx / n);
            for j in 0..d {
                let x_hat = (xr[j] - mu) * r;
                dxr[j] = r * (dyr[j] * w[j] - mean_g - x_hat * mean_gx);
            }
        });
        // Sums over rows: each rayon task folds its rows, then the partial sums add up.
        let dw_db = (want_dw || want_db).then(|| {
            x.par_chunks(d)
                .zip(dy.par_chunks(d))
                .fold(
                    || (vec![T::zero(); d], vec![T::zero(); d]),
                    |(mut dw, mut db), (xr, dyr)| {
                        let (mu, r) = stats(xr, self.center, self.eps);
                        for j in 0..d {
                            dw[j] += dyr[j] * (xr[j] - mu) * r;
                            db[j] += dyr[j];
                        }
                        (dw, db)
                    },
                )
                .reduce(
                    || (vec![T::zero(); d], vec![T::zero(); d]),
                    |(a, b), (c, e)| {
                        (
                            a.iter().zip(&c).map(|(&x, &y)| x + y).collect(),
                            b.iter().zip(&e).map(|(&x, &y)| x + y).collect(),
                        )
                    },
                )
        });
        let (dw, db) = dw_db.map_or((None, None), |(dw, db)| (want_dw.then_some(dw), want_db.then_some(db)));
        Grads { dx, dw, db }
    }

    fn bwd_tensors<T: Float>(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        dy: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let dy = dy.to_dtype(x.dtype())?;
        let grads = with_slice::<T, _>(x, |xs| {
            with_slice::<T, _>(w, |ws| {
                with_slice::<T, _>(&dy, |dys| self.backward(xs, ws, dys, w.track_op(), b.is_some_and(|b| b.track_op())))
            })
        })???;
        let d = w.dims1()?;
        Ok([
            x.track_op().then(|| tensor(grads.dx, x.dims())).transpose()?,
            grads.dw.map(|g| tensor(g, &[d])).transpose()?,
            grads.db.map(|g| tensor(g, &[d])).transpose()?,
        ])
    }
}

struct Grads<T> {
    dx: Vec<T>,
    dw: Option<Vec<T>>,
    db: Option<Vec<T>>,
}

fn fwd2<T: Float>(
    n: &Norm,
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let y = n.forward(storage_slice::<T>(x, xl)?, storage_slice::<T>(w, wl)?, None);
    Ok((owned(y), xl.shape().clone()))
}

#[allow(clippy::too_many_arguments)]
fn fwd3<T: Float>(
    n: &Norm,
    x: &CpuStorage,
    xl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
    b: &CpuStorage,
    bl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let y = n.forward(storage_slice::<T>(x, xl)?, storage_slice::<T>(w, wl)?, Some(storage_slice::<T>(b, bl)?));
    Ok((owned(y), xl.shape().clone()))
}

/// RMSNorm: `norm(x, w)`.
impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, fwd2(self, x, xl, w, wl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = match x.dtype() {
            candle_core::DType::F32 => self.bwd_tensors::<f32>(x, w, None, dy)?,
            _ => self.bwd_tensors::<f64>(x, w, None, dy)?,
        };
        Ok((dx, dw))
    }
}

/// LayerNorm: `norm(x, w, b)`.
impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, fwd3(self, x, xl, w, wl, b, bl))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = match x.dtype() {
            candle_core::DType::F32 => self.bwd_tensors::<f32>(x, w, Some(b), dy)?,
            _ => self.bwd_tensors::<f64>(x, w, Some(b), dy)?,
        };
        Ok((dx, dw, db))
    }
}

/// RMSNorm of `x` [..., d] with weight `w` \[d\], as one op (the caller checked [`super::usable`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(Box::new(Norm { eps, center: false })))
}

/// LayerNorm of `x` [..., d] with weight and bias \[d\], as one op.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        &w.contiguous()?,
        &b.contiguous()?,
        std::sync::Arc::new(Box::new(Norm { eps, center: true })),
    )
}
