//! The MLP activations as single ops: Llama's SwiGLU product `silu(g) * u` (Shazeer 2020) and
//! GPT-2's `gelu_new`. Composed in candle, SwiGLU is three nodes and keeps `silu(g)` alive
//! beside `g` and `u`; fused, it keeps `g` and `u` only.
//!
//! ```text
//! silu(g)  = g s(g),  s = sigmoid        silu'(g) = s(g) (1 + g (1 - s(g)))
//! gelu(x)  = x (1 + tanh(c (x + 0.044715 x^3))) / 2,  c = sqrt(2 / pi)
//! gelu'(x) = (1 + th) / 2 + x (1 - th^2) c (1 + 3 * 0.044715 x^2) / 2
//! ```

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, owned, storage_slice, tensor, with_slice, Float};

fn f<T: Float>(v: f64) -> T {
    <T as candle_core::WithDType>::from_f64(v)
}

/// Elements per rayon task: large enough that scheduling costs nothing.
const CHUNK: usize = 1 << 14;

/// `silu(g) * u` for `g`, `u` of one shape.
struct SwiGlu;

fn swiglu_fwd<T: Float>(
    g: &CpuStorage,
    gl: &Layout,
    u: &CpuStorage,
    ul: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (g, u) = (storage_slice::<T>(g, gl)?, storage_slice::<T>(u, ul)?);
    if g.len() != u.len() {
        candle_core::bail!("swiglu: gate has {} elements, up {}", g.len(), u.len());
    }
    let mut y = vec![T::zero(); g.len()];
    y.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(y, (g, u))| {
        // y holds e^-g first (vectorized), then silu(g) u = g / (1 + e^-g) u.
        super::exp::exp_neg(g, y);
        for i in 0..y.len() {
            y[i] = g[i] / (T::one() + y[i]) * u[i];
        }
    });
    Ok((owned(y), gl.shape().clone()))
}

fn swiglu_bwd<T: Float>(g: &Tensor, u: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let dy = dy.to_dtype(g.dtype())?;
    let (dg, du) = with_slice::<T, _>(g, |g| {
        with_slice::<T, _>(u, |u| {
            with_slice::<T, _>(&dy, |dy| {
                let (mut dg, mut du) = (vec![T::zero(); g.len()], vec![T::zero(); g.len()]);
                dg.par_chunks_mut(CHUNK)
                    .zip(du.par_chunks_mut(CHUNK))
                    .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
                    .for_each(|((dg, du), ((g, u), dy))| {
                        // du holds e^-g first (vectorized), then the gradient.
                        super::exp::exp_neg(g, du);
                        for i in 0..dg.len() {
                            let s = T::one() / (T::one() + du[i]);
                            du[i] = dy[i] * g[i] * s;
                            dg[i] = dy[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
                        }
                    });
                (dg, du)
            })
        })
    })???;
    Ok((tensor(dg, g.dims())?, tensor(du, g.dims())?))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        u: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(g, swiglu_fwd(g, gl, u, ul))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = match g.dtype() {
            candle_core::DType::F32 => swiglu_bwd::<f32>(g, u, dy)?,
            _ => swiglu_bwd::<f64>(g, u, dy)?,
        };
        Ok((g.track_op().then_some(dg), u.track_op().then_some(du)))
    }
}

/// GPT-2's `gelu_new` (the tanh approximation).
struct GeluNew;

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_A: f64 = 0.044_715;

fn gelu_fwd<T: Float>(x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = storage_slice::<T>(x, xl)?;
    let (c, a, half) = (f::<T>(GELU_C), f::<T>(GELU_A), f::<T>(0.5));
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for i in 0..y.len() {
            let v = x[i];
            y[i] = half * v * (T::one() + (c * (v + a * v * v * v)).tanh());
        }
    });
    Ok((owned(y), xl.shape().clone()))
}

fn gelu_bwd<T: Float>(x: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    let dy = dy.to_dtype(x.dtype())?;
    let (c, a, half, three) = (f::<T>(GELU_C), f::<T>(GELU_A), f::<T>(0.5), f::<T>(3.0));
    let dx = with_slice::<T, _>(x, |x| {
        with_slice::<T, _>(&dy, |dy| {
            let mut dx = vec![T::zero(); x.len()];
            dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (x, dy))| {
                for i in 0..dx.len() {
                    let v = x[i];
                    let th = (c * (v + a * v * v * v)).tanh();
                    let d =
                        half * (T::one() + th) + half * v * (T::one() - th * th) * c * (T::one() + three * a * v * v);
                    dx[i] = dy[i] * d;
                }
            });
            dx
        })
    })??;
    tensor(dx, x.dims())
}

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "fused-gelu-new"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(x, gelu_fwd(x, xl))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match x.dtype() {
            candle_core::DType::F32 => gelu_bwd::<f32>(x, dy)?,
            _ => gelu_bwd::<f64>(x, dy)?,
        }))
    }
}

/// `silu(g) * u` as one op.
pub fn swiglu(g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    g.contiguous()?.apply_op2_arc(&u.contiguous()?, std::sync::Arc::new(Box::new(SwiGlu)))
}

/// `gelu_new(x)` as one op.
pub fn gelu_new(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(GeluNew)))
}
