//! The output head and the cross-entropy loss as one op that never holds the [tokens, vocab]
//! logits: `loss = mean_i (logsumexp(h_i W^T) - h_i . W[t_i])` for hidden rows `h` [n, d], head
//! weight `W` [vocab, d] and targets `t`.
//!
//! At SmolLM2's 49,152-token vocabulary one [1024, vocab] f32 copy of the logits is 201 MB, and
//! candle's log-softmax + gather keeps several of them alive through the backward. Here the
//! rows go through in chunks: the forward keeps only each row's logsumexp, and the backward
//! recomputes a chunk's logits to form `dlogits = (softmax - onehot) / n`, then
//! `dh = dlogits W` (and `dW += dlogits^T h` when the head is being trained). One chunk of
//! logits is alive at a time.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, matmul, owned, storage_slice, tensor, with_slice, Float, Mat};

/// Rows of logits computed at a time: 128 x 49,152 f32 is 25 MB.
const CHUNK_ROWS: usize = 128;

/// The op: targets, and the per-row logsumexp the forward leaves for the backward.
#[derive(Debug)]
pub struct HeadCrossEntropy {
    targets: Vec<u32>,
    lse: Mutex<Vec<f64>>,
}

fn check(n: usize, vocab: usize, targets: &[u32], h: &[usize], w: &[usize]) -> candle_core::Result<()> {
    match (h, w) {
        ([rows, d], [_, d2]) if d == d2 && *rows == n && targets.len() == n => {}
        _ => candle_core::bail!("head cross-entropy: expected h [{}, d] and W [vocab, d], got {h:?} and {w:?}", targets.len()),
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("head cross-entropy: target {t} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

/// Logits of rows `start..start + rows` of `h`: [rows, vocab].
fn chunk_logits<T: Float>(h: &[T], w: &[T], d: usize, vocab: usize, start: usize, rows: usize) -> Vec<T> {
    let mut logits = vec![T::zero(); rows * vocab];
    matmul(&mut logits, vocab, (rows, vocab, d), Mat::rows(&h[start * d..], d), Mat::rows(w, d).t(), false, true);
    logits
}

impl HeadCrossEntropy {
    fn forward<T: Float>(&self, h: &[T], w: &[T], d: usize) -> T {
        let (n, vocab) = (self.targets.len(), w.len() / d);
        let mut lse = vec![0f64; n];
        let mut total = 0f64;
        for start in (0..n).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(n - start);
            let logits = chunk_logits(h, w, d, vocab, start, rows);
            let targets = &self.targets[start..start + rows];
            let mut losses = vec![0f64; rows];
            logits.par_chunks(vocab).zip(lse[start..start + rows].par_iter_mut()).zip(losses.par_iter_mut()).zip(targets.par_iter()).for_each(
                |(((row, lse), loss), &t)| {
                    let max = row.iter().fold(T::neg_infinity(), |m, &v| num_traits::Float::max(m, v));
                    let sum = row.iter().map(|&v| (v - max).exp()).sum::<T>();
                    *lse = <T as candle_core::WithDType>::to_f64(max + sum.ln());
                    *loss = *lse - <T as candle_core::WithDType>::to_f64(row[t as usize]);
                },
            );
            // Summed in row order, so the loss does not depend on how rayon split the work.
            total += losses.iter().sum::<f64>();
        }
        *self.lse.lock().expect("the lse lock is never poisoned") = lse;
        <T as candle_core::WithDType>::from_f64(total / n as f64)
    }

    /// dh, and dW when `want_dw`, for the upstream gradient `g` of the mean loss.
    fn backward<T: Float>(&self, h: &[T], w: &[T], d: usize, g: f64, want_dw: bool) -> (Vec<T>, Option<Vec<T>>) {
        let (n, vocab) = (self.targets.len(), w.len() / d);
        let lse = self.lse.lock().expect("the lse lock is never poisoned");
        let coef = g / n as f64;
        let mut dh = vec![T::zero(); n * d];
        let mut dw = want_dw.then(|| vec![T::zero(); vocab * d]);
        for start in (0..n).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(n - start);
            let mut dlogits = chunk_logits(h, w, d, vocab, start, rows);
            dlogits.par_chunks_mut(vocab).zip(&lse[start..start + rows]).zip(&self.targets[start..start + rows]).for_each(
                |((row, &lse), &t)| {
                    let lse = <T as candle_core::WithDType>::from_f64(lse);
                    let c = <T as candle_core::WithDType>::from_f64(coef);
                    row.iter_mut().for_each(|v| *v = (*v - lse).exp() * c);
                    row[t as usize] = row[t as usize] - c;
                },
            );
            matmul(&mut dh[start * d..], d, (rows, d, vocab), Mat::rows(&dlogits, vocab), Mat::rows(w, d), false, true);
            if let Some(dw) = &mut dw {
                matmul(dw, d, (vocab, d, rows), Mat::rows(&dlogits, vocab).t(), Mat::rows(&h[start * d..], d), true, true);
            }
        }
        (dh, dw)
    }
}

fn fwd<T: Float>(op: &HeadCrossEntropy, h: &CpuStorage, hl: &Layout, w: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let d = *wl.dims().last().unwrap_or(&0);
    check(op.targets.len(), wl.dims()[0], &op.targets, hl.dims(), wl.dims())?;
    let loss = op.forward(storage_slice::<T>(h, hl)?, storage_slice::<T>(w, wl)?, d);
    Ok((owned(vec![loss]), Shape::from(())))
}

fn bwd<T: Float>(op: &HeadCrossEntropy, h: &Tensor, w: &Tensor, g: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let g = g.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let d = w.dim(1)?;
    let (dh, dw) = with_slice::<T, _>(h, |hs| with_slice::<T, _>(w, |ws| op.backward(hs, ws, d, g, w.track_op())))??;
    Ok((tensor(dh, h.dims())?, dw.map(|dw| tensor(dw, w.dims())).transpose()?))
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-head-cross-entropy"
    }

    fn cpu_fwd(&self, h: &CpuStorage, hl: &Layout, w: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        by_dtype!(h, fwd(self, h, hl, w, wl))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _loss: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dh, dw) = match h.dtype() {
            candle_core::DType::F32 => bwd::<f32>(self, h, w, g)?,
            _ => bwd::<f64>(self, h, w, g)?,
        };
        Ok((h.track_op().then_some(dh), dw))
    }
}

/// Mean cross-entropy of the logits `h W^T` (`h` [n, d], `W` [vocab, d]) against `targets` [n],
/// without materializing the logits.
pub fn head_cross_entropy(h: &Tensor, w: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let op = HeadCrossEntropy { targets: targets.to_vec(), lse: Mutex::new(Vec::new()) };
    h.contiguous()?.apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(Box::new(op)))
}
