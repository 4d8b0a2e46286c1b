//! Causal self-attention for training as one op, with RoPE applied inside and grouped-query heads
//! (Ainslie et al. 2023): `q` [batch, seq, heads * hd], `k`, `v` [batch, seq, kv_heads * hd] in,
//! [batch, seq, heads * hd] out, the layout the projections produce and `o_proj` takes, so no
//! transposed copies exist either.
//!
//! Per head: `S = scale * rope(Q) rope(K)^T`, `P = softmax(S + causal mask)`, `Y = P V`. With a
//! sliding window `w` (Mistral, some Qwen2 layers) the mask also hides keys more than `w - 1`
//! positions back, so each query sees at most `w` keys, itself included. The
//! probabilities are not kept: at a sequence of 128 recomputing them in the backward costs less
//! than one small matmul per head, and storing them would cost more memory than the rest of the
//! layer (the idea of FlashAttention, Dao et al. 2022, without the tiling). The backward:
//!
//! ```text
//! dV = P^T dY       dP = dY V^T       dS = P * (dP - rowsum(P * dP))
//! dQ = scale * dS K (then rotated back)     dK = scale * dS^T Q (then rotated back)
//! ```

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::rope::RopeTables;
use super::{by_dtype, matmul, owned, storage_slice, tensor, with_slice, Float, Mat};

/// The op's settings: head counts, head size, RoPE tables (Llama) or none (GPT-2), and a
/// sliding window or none (plain causal attention).
#[derive(Clone, Debug)]
pub struct CausalAttention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope: Option<RopeTables>,
    /// Query `i` sees keys `i + 1 - window ..= i` (transformers' `kv_idx > q_idx - window`).
    pub window: Option<usize>,
}

// ANCHOR: first_key
/// The first key query `i` may see: 0 without a window, else `i + 1 - window` (so it sees
/// `window` keys, itself included, as transformers' `kv_idx > q_idx - sliding_window`).
pub fn first_key(i: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (i + 1).saturating_sub(w))
}
// ANCHOR_END: first_key

/// Column block `col` (width `hd`) of the [seq, width] matrix `m`, copied out as [seq, hd],
/// rotated by RoPE when there are tables.
fn gather<T: Float>(m: &[T], width: usize, col: usize, hd: usize, rope: Option<&RopeTables>) -> Vec<T> {
    let seq = m.len() / width;
    let mut out = vec![T::zero(); seq * hd];
    for (i, row) in out.chunks_mut(hd).enumerate() {
        row.copy_from_slice(&m[i * width + col * hd..i * width + (col + 1) * hd]);
        if let Some(r) = rope {
            r.rotate(row, i, false);
        }
    }
    out
}

/// `P = softmax(scale * Q K^T + causal mask)` [seq, seq] for one head, zero outside the window.
fn probs<T: Float>(q: &[T], k: &[T], seq: usize, hd: usize, scale: T, window: Option<usize>) -> Vec<T> {
    let mut p = vec![T::zero(); seq * seq];
    matmul(&mut p, seq, (seq, seq, hd), Mat::rows(q, hd), Mat::rows(k, hd).t(), false, false);
    for (i, row) in p.chunks_mut(seq).enumerate() {
        let first = first_key(i, window);
        row[..first].iter_mut().for_each(|v| *v = T::zero());
        let seen = &mut row[first..=i];
        seen.iter_mut().for_each(|v| *v *= scale);
        let max = seen.iter().fold(T::neg_infinity(), |m, &v| num_traits::Float::max(m, v));
        super::exp::exp_scaled(seen, max, T::one());
        let sum = seen.iter().copied().sum::<T>();
        for v in seen.iter_mut() {
            *v /= sum;
        }
        row[i + 1..].iter_mut().for_each(|v| *v = T::zero());
    }
    p
}

impl CausalAttention {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn scale<T: Float>(&self) -> T {
        <T as candle_core::WithDType>::from_f64(1.0 / (self.head_dim as f64).sqrt())
    }

    /// One sequence: `y` [seq, heads * hd] from its q, k, v.
    fn forward_seq<T: Float>(&self, q: &[T], k: &[T], v: &[T], y: &mut [T]) {
        let (hd, qw, kw) = (self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let seq = q.len() / qw;
        for g in 0..self.kv_heads {
            let kg = gather(k, kw, g, hd, self.rope.as_ref());
            let vg = gather(v, kw, g, hd, None);
            for h in g * self.groups()..(g + 1) * self.groups() {
                let qh = gather(q, qw, h, hd, self.rope.as_ref());
                let p = probs(&qh, &kg, seq, hd, self.scale(), self.window);
                // Y_h = P V, written straight into its column block of y.
                matmul(&mut y[h * hd..], qw, (seq, hd, seq), Mat::rows(&p, seq), Mat::rows(&vg, hd), false, false);
            }
        }
    }

    /// One sequence's gradients dq, dk, dv from dy.
    #[allow(clippy::too_many_arguments)]
    fn backward_seq<T: Float>(&self, q: &[T], k: &[T], v: &[T], dy: &[T], dq: &mut [T], dk: &mut [T], dv: &mut [T]) {
        let (hd, qw, kw) = (self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let seq = q.len() / qw;
        let scale: T = self.scale();
        for g in 0..self.kv_heads {
            let kg = gather(k, kw, g, hd, self.rope.as_ref());
            let vg = gather(v, kw, g, hd, None);
            let (mut dkg, mut dvg) = (vec![T::zero(); seq * hd], vec![T::zero(); seq * hd]);
            for h in g * self.groups()..(g + 1) * self.groups() {
                let qh = gather(q, qw, h, hd, self.rope.as_ref());
                // ANCHOR: attention_backward
                let p = probs(&qh, &kg, seq, hd, scale, self.window);
                let dyh = Mat::strided(&dy[h * hd..], qw);
                // dV += P^T dY_h
                matmul(&mut dvg, hd, (seq, hd, seq), Mat::rows(&p, seq).t(), dyh, true, false);
                // dP = dY_h V^T, then dS = scale * P * (dP - rowsum(P * dP)) in place.
                let mut ds = vec![T::zero(); seq * seq];
                matmul(&mut ds, seq, (seq, seq, hd), dyh, Mat::rows(&vg, hd).t(), false, false);
                for (prow, drow) in p.chunks(seq).zip(ds.chunks_mut(seq)) {
                    let dot = prow.iter().zip(drow.iter()).map(|(&a, &b)| a * b).sum::<T>();
                    for (d, &pv) in drow.iter_mut().zip(prow) {
                        *d = scale * pv * (*d - dot);
                    }
                }
                // dQ_h = dS K (rotated back), dK += dS^T Q.
                let mut dqh = vec![T::zero(); seq * hd];
                matmul(&mut dqh, hd, (seq, hd, seq), Mat::rows(&ds, seq), Mat::rows(&kg, hd), false, false);
                matmul(&mut dkg, hd, (seq, hd, seq), Mat::rows(&ds, seq).t(), Mat::rows(&qh, hd), true, false);
                // ANCHOR_END: attention_backward
                for (i, row) in dqh.chunks_mut(hd).enumerate() {
                    if let Some(r) = &self.rope {
                        r.rotate(row, i, true);
                    }
                    dq[i * qw + h * hd..i * qw + (h + 1) * hd].copy_from_slice(row);
                }
            }
            for i in 0..seq {
                let row = &mut dkg[i * hd..(i + 1) * hd];
                if let Some(r) = &self.rope {
                    r.rotate(row, i, true);
                }
                dk[i * kw + g * hd..i * kw + (g + 1) * hd].copy_from_slice(row);
                dv[i * kw + g * hd..i * kw + (g + 1) * hd].copy_from_slice(&dvg[i * hd..(i + 1) * hd]);
            }
        }
    }

    fn check(&self, q: &[usize], k: &[usize], v: &[usize]) -> candle_core::Result<(usize, usize)> {
        let (qw, kw) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        match (q, k, v) {
            ([b, t, a], [b2, t2, c], [b3, t3, e])
                if b == b2 && b == b3 && t == t2 && t == t3 && *a == qw && *c == kw && *e == kw =>
            {
                if self.window == Some(0) {
                    candle_core::bail!("attention: a sliding window of 0 keys lets no query see anything");
                }
                if let Some(r) = &self.rope {
                    if r.half * 2 != self.head_dim || r.cos.len() < t * r.half {
                        candle_core::bail!(
                            "attention: RoPE tables do not cover {t} positions of head_dim {}",
                            self.head_dim
                        );
                    }
                }
                Ok((*b, *t))
            }
            _ => candle_core::bail!(
                "attention: expected q [b, t, {qw}], k and v [b, t, {kw}], got q {q:?}, k {k:?}, v {v:?}"
            ),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fwd<T: Float>(
    a: &CausalAttention,
    q: &CpuStorage,
    ql: &Layout,
    k: &CpuStorage,
    kl: &Layout,
    v: &CpuStorage,
    vl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let (_, t) = a.check(ql.dims(), kl.dims(), vl.dims())?;
    let (q, k, v) = (storage_slice::<T>(q, ql)?, storage_slice::<T>(k, kl)?, storage_slice::<T>(v, vl)?);
    let (qw, kw) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    let mut y = vec![T::zero(); q.len()];
    // One rayon task per sequence of the batch.
    y.par_chunks_mut(t * qw)
        .zip(q.par_chunks(t * qw).zip(k.par_chunks(t * kw).zip(v.par_chunks(t * kw))))
        .for_each(|(y, (q, (k, v)))| a.forward_seq(q, k, v, y));
    Ok((owned(y), ql.shape().clone()))
}

fn bwd<T: Float>(
    a: &CausalAttention,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<[Tensor; 3]> {
    let (_, t) = a.check(q.dims(), k.dims(), v.dims())?;
    let (qw, kw) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
    let dy = dy.to_dtype(q.dtype())?;
    let (dq, dk, dv) = with_slice::<T, _>(q, |q| {
        with_slice::<T, _>(k, |k| {
            with_slice::<T, _>(v, |v| {
                with_slice::<T, _>(&dy, |dy| {
                    let (mut dq, mut dk, mut dv) =
                        (vec![T::zero(); q.len()], vec![T::zero(); k.len()], vec![T::zero(); v.len()]);
                    dq.par_chunks_mut(t * qw)
                        .zip(dk.par_chunks_mut(t * kw).zip(dv.par_chunks_mut(t * kw)))
                        .zip(
                            q.par_chunks(t * qw)
                                .zip(k.par_chunks(t * kw))
                                .zip(v.par_chunks(t * kw).zip(dy.par_chunks(t * qw))),
                        )
                        .for_each(|((dq, (dk, dv)), ((q, k), (v, dy)))| a.backward_seq(q, k, v, dy, dq, dk, dv));
                    (dq, dk, dv)
                })
            })
        })
    })????;
    Ok([tensor(dq, q.dims())?, tensor(dk, k.dims())?, tensor(dv, v.dims())?])
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(q, fwd(self, q, ql, k, kl, v, vl))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dq, dk, dv] = match q.dtype() {
            candle_core::DType::F32 => bwd::<f32>(self, q, k, v, dy)?,
            _ => bwd::<f64>(self, q, k, v, dy)?,
        };
        Ok((q.track_op().then_some(dq), k.track_op().then_some(dk), v.track_op().then_some(dv)))
    }
}

/// Causal attention of `q` [batch, seq, heads * hd] over `k`, `v` [batch, seq, kv_heads * hd]
/// (positions `0..seq`, no cache), RoPE applied to q and k when `rope` is given, each query
/// seeing at most `window` keys when the op has one.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, op: CausalAttention) -> candle_core::Result<Tensor> {
    q.contiguous()?.apply_op3_arc(&k.contiguous()?, &v.contiguous()?, std::sync::Arc::new(Box::new(op)))
}
