//! The ops a training forward pass uses, each one with a working backward.
//!
//! candle 0.11 has fast versions of several of these (`softmax_last_dim`, `rms_norm`,
//! `layer_norm`, `rotary_emb::rope`) that record no backward at all: a model built on them trains
//! without an error while the adapters below them get wrong gradients. So the models call only
//! the functions here, and `tests/ops_gradients.rs` checks every one against finite differences.
//!
//! [`frozen_linear`] is the one op written by hand. candle's backward of `x.matmul(w)` computes
//! the gradient of both operands, and for a frozen weight that second matmul is wasted work (a
//! third of a linear layer's training cost) and a weight-sized tensor kept alive. Our op's
//! backward returns only the input's gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};

use crate::Result;

/// `x W^T` for a weight that gets no gradient, as one op whose backward computes only the input
/// gradient `dy W`. Holds the weight, so the op has one input and keeps nothing else alive.
struct FrozenLinear {
    /// [out, in], contiguous.
    weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out_f, in_f) = self.weight.dims2()?;
        let dims = x_l.dims();
        let m = x_l.shape().elem_count() / in_f;
        // The caller made x contiguous, so it can be read as a [m, in] matrix.
        let x2 = Layout::contiguous_with_offset((m, in_f), x_l.start_offset());
        let (w_storage, w_l) = self.weight.storage_and_layout();
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
        Ok(Some(grad_y.broadcast_matmul(&self.weight)?))
    }
    // ANCHOR_END: frozen_bwd
}

/// `x W^T` where W [out, in] gets no gradient. On the CPU this is [`FrozenLinear`]; elsewhere
/// the plain matmul of a detached weight (same values, candle just computes a gradient it
/// throws away).
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let weight = weight.detach();
    let usable = x.device().is_cpu() && x.dtype() == weight.dtype() && matches!(x.dtype(), DType::F32 | DType::F64);
    if usable {
        let weight = weight.contiguous()?;
        return Ok(x.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(FrozenLinear { weight })))?);
    }
    Ok(x.broadcast_matmul(&weight.t()?)?)
}

/// GPT-2's activation, `gelu_new`: the tanh approximation
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, which is candle's `gelu`.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    Ok(x.gelu()?)
}

/// SiLU, `x sigmoid(x)`, Llama's MLP activation.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

// ANCHOR: softmax
/// Softmax over the last dim, built from ops that all have a backward
/// (not `softmax_last_dim`, which has none).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}
// ANCHOR_END: softmax

/// LayerNorm over the last dim with weight and bias (GPT-2's `ln_1`, `ln_2`, `ln_f`).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)?)
}

/// RMSNorm over the last dim, `x / sqrt(mean(x^2) + eps) * weight`. Half-precision input is
/// normalized in f32, as transformers' `LlamaRMSNorm` does.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let inner = if matches!(dtype, DType::BF16 | DType::F16) { DType::F32 } else { dtype };
    let xi = x.to_dtype(inner)?;
    let norm = xi.broadcast_div(&(xi.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?;
    Ok(norm.to_dtype(dtype)?.broadcast_mul(weight)?)
}

/// Rotary position embedding in Hugging Face's "rotate half" layout, for `x` [batch, heads, seq,
/// head_dim] and `cos`, `sin` [seq, head_dim / 2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope_slow(&x.contiguous()?, cos, sin)?)
}

/// Row `i` of `table` [vocab, dim] for every id in `ids` [batch, seq]: [batch, seq, dim].
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dim = table.dim(1)?;
    Ok(table.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, dim))?)
}

/// Causal self-attention for `q` [batch, heads, seq, head_dim] and `k`, `v` [batch, kv_heads,
/// kv_len, head_dim] with `kv_len = offset + seq` (the first `offset` positions come from a KV
/// cache). Each group of `heads / kv_heads` query heads shares one key/value head (grouped-query
/// attention, Ainslie et al. 2023); GPT-2 has `kv_heads == heads`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, heads, seq, hd) = q.dims4()?;
    let (_, kv_heads, kv_len, _) = k.dims4()?;
    let groups = heads / kv_heads;
    let offset = kv_len - seq;
    // Fold the query heads of a group into the sequence axis, so one matmul per kv head serves
    // the whole group without copying K and V `groups` times.
    let q = q.reshape((b, kv_heads, groups * seq, hd))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let mask = causal_mask(groups, seq, offset, q.dtype(), q.device())?;
    let probs = softmax_last(&scores.broadcast_add(&mask)?)?;
    Ok(probs.matmul(v)?.reshape((b, heads, seq, hd))?)
}

/// An additive mask [groups * seq, offset + seq]: 0 where query `i` (at position `offset + i`)
/// may look at key `j`, minus infinity where `j` is in its future.
fn causal_mask(groups: usize, seq: usize, offset: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let kv_len = offset + seq;
    let mask: Vec<f32> = (0..groups * seq)
        .flat_map(|row| {
            let pos = offset + row % seq;
            (0..kv_len).map(move |j| if j <= pos { 0.0 } else { f32::NEG_INFINITY })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (groups * seq, kv_len), device)?.to_dtype(dtype)?)
}

/// Mean cross-entropy of `logits` [n, vocab] against `targets` [n] (u32), through log-softmax
/// and a gather: every op has a backward. Issue 4's training loss adds label masking.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}
