//! The output head and the cross-entropy loss as one op that never holds the [tokens, vocab]
//! logits: `loss = mean_i (logsumexp(h_i W^T) - h_i . W[t_i])` for hidden rows `h` [n, d], head
//! weight `W` [vocab, d] and targets `t`.
//!
//! At SmolLM2's 49,152-token vocabulary one [1024, vocab] f32 copy of the logits is 201 MB, and
//! candle's log-softmax + gather keeps several of them alive through the backward. Here the
//! rows go through in chunks, one chunk of logits alive at a time.
//!
//! The loss is a scalar at the end of the graph, so its gradient can be formed while each chunk's
//! logits are at hand (the trick of Liger Kernel's fused linear cross-entropy): when `h` (or `W`)
//! will need a gradient, the forward turns the chunk into `dlogits = (softmax - onehot) / n` and
//! accumulates `dh = dlogits W` (and `dW = dlogits^T h`). The backward only scales them by the
//! upstream gradient. Computing the logits once instead of twice saves one head-sized matmul per
//! step (about a fifth of the forward at SmolLM2's shape).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, matmul, matmul_packed, owned, storage_slice, tensor, Float, FrozenWeight, Mat, Product};

/// Rows of logits computed at a time: 128 x 49,152 f32 is 25 MB.
const CHUNK_ROWS: usize = 128;

/// The op: targets, which gradients to form, and the gradients of the mean loss the forward left
/// for the backward.
#[derive(Debug)]
struct HeadCrossEntropy {
    targets: Vec<u32>,
    want_dh: bool,
    want_dw: bool,
    /// (dh, dW) of the loss itself (upstream gradient 1).
    grads: Mutex<(Option<Tensor>, Option<Tensor>)>,
    /// The head weight when it is bf16 beside f32 hidden rows (`--bf16` on the CPU): held here
    /// and multiplied as stored; it is frozen, so it gets no gradient.
    frozen: Option<FrozenWeight>,
}

/// The head weight as the forward reads it.
#[derive(Clone, Copy)]
enum HeadWeight<'a, T> {
    /// [vocab, d] of the hidden rows' dtype.
    Slice(&'a [T]),
    /// A frozen bf16 weight.
    Frozen(&'a FrozenWeight),
}

fn check(vocab: usize, targets: &[u32], h: &[usize], w: &[usize]) -> candle_core::Result<()> {
    match (h, w) {
        ([rows, d], [_, d2]) if d == d2 && *rows == targets.len() && !targets.is_empty() => {}
        _ => candle_core::bail!(
            "head cross-entropy: expected h [{}, d] and W [vocab, d], got {h:?} and {w:?}",
            targets.len()
        ),
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("head cross-entropy: target {t} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

impl HeadCrossEntropy {
    /// The mean loss; with `want_dh` / `want_dw`, also its gradients, stored for the backward.
    fn forward<T: Float>(&self, h: &[T], w: HeadWeight<T>, d: usize) -> candle_core::Result<T> {
        let n = self.targets.len();
        let vocab = match w {
            HeadWeight::Slice(w) => w.len() / d,
            HeadWeight::Frozen(w) => w.dims()?.0,
        };
        let coef = <T as candle_core::WithDType>::from_f64(1.0 / n as f64);
        let mut total = 0f64;
        let mut dh = self.want_dh.then(|| vec![T::zero(); n * d]);
        let mut dw = self.want_dw.then(|| vec![T::zero(); vocab * d]);
        let mut logits = vec![T::zero(); CHUNK_ROWS.min(n) * vocab];
        // A bf16 head is prepared once here (packed for the kernel, or widened for the portable
        // path, both rounding the rows they multiply to bf16), not once per chunk. Any other
        // frozen head (quantized, another dtype) is widened to T once, read as a plain slice.
        let products: &[Product] = if self.want_dh { &[Product::XWt, Product::XW] } else { &[Product::XWt] };
        let (packed_fwd, packed_bwd) = match w {
            HeadWeight::Frozen(w) => match w.pack_bf16::<T>(products)? {
                Some(mut packed) => {
                    let bwd = if self.want_dh { packed.pop() } else { None };
                    (packed.pop(), bwd)
                }
                None => (None, None),
            },
            HeadWeight::Slice(_) => (None, None),
        };
        let widened = match w {
            HeadWeight::Frozen(fw) if packed_fwd.is_none() => Some(fw.dense(T::DTYPE)?),
            _ => None,
        };
        let widened_slice = widened.as_ref().map(|t| t.flatten_all()?.to_vec1::<T>()).transpose()?;
        let w = match &widened_slice {
            Some(v) => HeadWeight::Slice(v.as_slice()),
            None => w,
        };
        for start in (0..n).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(n - start);
            let logits = &mut logits[..rows * vocab];
            let hs = &h[start * d..(start + rows) * d];
            match w {
                HeadWeight::Slice(w) => {
                    matmul(logits, vocab, (rows, vocab, d), Mat::rows(hs, d), Mat::rows(w, d).t(), false, true)
                }
                HeadWeight::Frozen(w) => match &packed_fwd {
                    Some(p) => matmul_packed(logits, vocab, hs, rows, p, false),
                    None => w.matmul_into(logits, hs, rows, Product::XWt, false)?,
                },
            }
            let targets = &self.targets[start..start + rows];
            let mut losses = vec![0f64; rows];
            let grad = self.want_dh || self.want_dw;
            logits.par_chunks_mut(vocab).zip(losses.par_iter_mut()).zip(targets.par_iter()).for_each(
                |((row, loss), &t)| {
                    let max = row.iter().fold(T::neg_infinity(), |m, &v| num_traits::Float::max(m, v));
                    let sum = super::exp::sum_exp(row, max);
                    let lse = max + sum.ln();
                    *loss = <T as candle_core::WithDType>::to_f64(lse - row[t as usize]);
                    if grad {
                        // The row becomes d(loss) / d(logits) = (softmax - onehot) / n.
                        super::exp::exp_scaled(row, lse, coef);
                        row[t as usize] -= coef;
                    }
                },
            );
            // Summed in row order, so the loss does not depend on how rayon split the work.
            total += losses.iter().sum::<f64>();
            if let Some(dh) = &mut dh {
                let dh = &mut dh[start * d..(start + rows) * d];
                match w {
                    HeadWeight::Slice(w) => {
                        matmul(dh, d, (rows, d, vocab), Mat::rows(logits, vocab), Mat::rows(w, d), false, true)
                    }
                    HeadWeight::Frozen(w) => match &packed_bwd {
                        Some(p) => matmul_packed(dh, d, logits, rows, p, false),
                        None => w.matmul_into(dh, logits, rows, Product::XW, false)?,
                    },
                }
            }
            if let (Some(dw), HeadWeight::Frozen(_)) = (&dw, w) {
                let _ = dw;
                candle_core::bail!("head cross-entropy: a gradient for a head weight held frozen");
            }
            if let Some(dw) = &mut dw {
                matmul(
                    dw,
                    d,
                    (vocab, d, rows),
                    Mat::rows(logits, vocab).t(),
                    Mat::rows(&h[start * d..], d),
                    true,
                    true,
                );
            }
        }
        let dh = dh.map(|g| tensor(g, &[n, d])).transpose()?;
        let dw = dw.map(|g| tensor(g, &[vocab, d])).transpose()?;
        *self.grads.lock().expect("the gradient lock is never poisoned") = (dh, dw);
        Ok(<T as candle_core::WithDType>::from_f64(total / n as f64))
    }
}

fn fwd<T: Float>(
    op: &HeadCrossEntropy,
    h: &CpuStorage,
    hl: &Layout,
    w: &CpuStorage,
    wl: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    check(wl.dims()[0], &op.targets, hl.dims(), wl.dims())?;
    let weight = match &op.frozen {
        Some(frozen) => HeadWeight::Frozen(frozen),
        None => HeadWeight::Slice(storage_slice::<T>(w, wl)?),
    };
    let loss = op.forward(storage_slice::<T>(h, hl)?, weight, wl.dims()[1])?;
    Ok((owned(vec![loss]), Shape::from(())))
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        h: &CpuStorage,
        hl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(h, fwd(self, h, hl, w, wl))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _loss: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let (dh, dw) = &*self.grads.lock().expect("the gradient lock is never poisoned");
        let scaled = |t: &Option<Tensor>, tracked: bool| match (t, tracked) {
            (Some(t), true) => Ok(Some((t * g)?)),
            (None, true) => candle_core::bail!("head cross-entropy: no gradient was formed in the forward"),
            (_, false) => Ok(None),
        };
        Ok((scaled(dh, h.track_op())?, scaled(dw, w.track_op())?))
    }
}

/// Mean cross-entropy of the logits `h W^T` (`h` [n, d], `W` [vocab, d]) against `targets` \[n\],
/// without materializing the logits. Gradients are formed for whichever of `h` and `W` track one.
pub fn head_cross_entropy(h: &Tensor, w: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    // A bf16 head beside f32 rows is multiplied as stored; it cannot be trained that way.
    let frozen = if w.dtype() != h.dtype() {
        if w.track_op() {
            candle_core::bail!(
                "head cross-entropy: the head weight is {:?} and trained, beside {:?} hidden rows; train it in {:?}",
                w.dtype(),
                h.dtype(),
                h.dtype()
            );
        }
        Some(FrozenWeight::dense_from(w)?)
    } else {
        None
    };
    let op = HeadCrossEntropy {
        targets: targets.to_vec(),
        want_dh: h.track_op(),
        want_dw: w.track_op(),
        grads: Mutex::new((None, None)),
        frozen,
    };
    h.contiguous()?.apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(Box::new(op)))
}
