//! The ops a training forward pass uses, each one with a working backward.
//!
//! candle 0.11 has fast versions of several of these (`softmax_last_dim`, `rms_norm`,
//! `layer_norm`, `rotary_emb::rope`) that record no backward at all: a model built on them trains
//! without an error while the adapters below them get wrong gradients. So the models call only
//! the functions here, and `tests/ops_gradients.rs` checks every one against finite differences.
//!
//! Each function takes the fused op of [`crate::compute::fused`] (one node, hand-written backward, no
//! gradient for constants) when the inputs are CPU f32/f64, and otherwise the composed version
//! in [`composed`], built from candle ops that have a backward. `tests/fused_ops.rs` checks that
//! the two agree and that both match finite differences.
//!
//! [`frozen_linear`] takes the first op written by hand ([`fused::frozen_linear`]). candle's backward of `x.matmul(w)` computes
//! the gradient of both operands, and for a frozen weight that second matmul is wasted work (a
//! third of a linear layer's training cost) and a weight-sized tensor kept alive. Our op's
//! backward returns only the input's gradient.

use candle_core::{DType, Tensor, D};

use crate::compute::fused;

use crate::error::{LoraError, Result};

/// `x W^T + b` for `x` of shape [n, in] or [batch, seq, in], `weight` [out, in], `bias` \[out\].
pub fn linear_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2()?;
    if x.dims().last() != Some(&in_features) {
        return Err(LoraError::shape(
            "linear input",
            format!("[..., {in_features}] (the weight is [{out_features}, {in_features}])"),
            x.dims(),
        ));
    }
    // ANCHOR: dispatch
    // A weight that is (or comes from) a `Var` is being trained and takes candle's matmul, whose
    // backward computes both gradients. A frozen weight takes `frozen_linear`, which skips the
    // weight's gradient.
    let y = if weight.track_op() {
        x.broadcast_matmul(&weight.to_dtype(x.dtype())?.t()?)?
    } else {
        frozen_linear(x, weight)?
    };
    // ANCHOR_END: dispatch
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `x W^T` where W [out, in] gets no gradient. On the CPU this is `FrozenLinear`; elsewhere
/// the plain matmul of a detached weight (same values, candle just computes a gradient it
/// throws away).
pub fn frozen_linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let weight = weight.detach();
    if fused::usable_with_weight(&[x], &weight) {
        let weight = weight.contiguous()?;
        return Ok(fused::frozen_linear::frozen_linear(x, fused::FrozenWeight::Dense(weight))?);
    }
    // A bf16 weight beside f32 activations (the CPU's `--bf16`) is widened for candle's matmul.
    Ok(x.broadcast_matmul(&weight.to_dtype(x.dtype())?.t()?)?)
}

/// `x W^T` for a quantized frozen weight W [out, in] (QLoRA, t09). On the CPU one op dequantizes
/// W in its forward, and again in its backward to return the input's gradient `dy W`; between
/// the two only the quantized weight is kept, never the f32 copy. Elsewhere W is dequantized
/// onto x's device and used as a detached dense weight (kept until the backward).
pub fn quantized_linear(
    x: &Tensor,
    weight: &std::sync::Arc<dyn crate::compute::quantized::QuantizedWeight>,
) -> Result<Tensor> {
    let (out_f, in_f) = weight.dims();
    if x.dims().last() != Some(&in_f) {
        return Err(LoraError::shape(
            "quantized linear input",
            format!("[..., {in_f}] (the weight is [{out_f}, {in_f}])"),
            x.dims(),
        ));
    }
    if fused::usable(&[x]) {
        return Ok(fused::frozen_linear::frozen_linear(x, fused::FrozenWeight::Quantized(weight.clone()))?);
    }
    let w = weight.dequantize(x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_matmul(&w.t()?)?)
}

/// GPT-2's activation, `gelu_new`: the tanh approximation
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    if fused::usable(&[x]) {
        return Ok(fused::elementwise::gelu_new(x)?);
    }
    composed::gelu_new(x)
}

/// SiLU, `x sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

/// Llama's gated MLP activation `silu(g) * u` (SwiGLU).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused::usable(&[g, u]) && g.dims() == u.dims() {
        return Ok(fused::elementwise::swiglu(g, u)?);
    }
    composed::swiglu(g, u)
}

pub use composed::softmax_last;

/// LayerNorm over the last dim with weight and bias (GPT-2's `ln_1`, `ln_2`, `ln_f`).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::usable(&[x, weight, bias]) {
        return Ok(fused::norm::layer_norm(x, weight, bias, eps)?);
    }
    composed::layer_norm(x, weight, bias, eps)
}

/// RMSNorm over the last dim, `x / sqrt(mean(x^2) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::usable(&[x, weight]) {
        return Ok(fused::norm::rms_norm(x, weight, eps)?);
    }
    composed::rms_norm(x, weight, eps)
}

/// Rotary position embedding in Hugging Face's "rotate half" layout, for `x` [batch, heads, seq,
/// head_dim] and `cos`, `sin` [seq, head_dim / 2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused::usable(&[x]) {
        return Ok(fused::rope::rope(x, cos, sin)?);
    }
    composed::rope(x, cos, sin)
}

/// Causal self-attention over a whole sequence (training and evaluation; no KV cache) in the
/// projections' own layout: `q` [batch, seq, heads * hd], `k`, `v` [batch, seq, kv_heads * hd],
/// RoPE on q and k when `rope` = (cos, sin) [seq, hd / 2] is given, each query seeing at most
/// `window` keys (itself included) when a sliding window is given. Returns [batch, seq, heads * hd].
pub fn self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    rope_tables: Option<(&Tensor, &Tensor)>,
    window: Option<usize>,
) -> Result<Tensor> {
    let head_dim = q.dim(2)? / heads;
    check_window(window)?;
    if fused::usable(&[q, k, v]) {
        let rope = rope_tables.map(|(c, s)| fused::rope::RopeTables::from_tensors(c, s)).transpose()?;
        let op = fused::attention::CausalAttention { heads, kv_heads, head_dim, rope, window };
        return Ok(fused::attention::causal_attention(q, k, v, op)?);
    }
    composed::self_attention(q, k, v, heads, kv_heads, rope_tables, window)
}

/// A sliding window must let a query see at least itself (checked where a config is read, and
/// by the ops for any other caller).
pub(crate) fn check_window(window: Option<usize>) -> Result<()> {
    if window == Some(0) {
        return Err(crate::error::LoraError::config("sliding_window", "is 0; a query must see at least itself"));
    }
    Ok(())
}

/// Mean cross-entropy of the head's logits `h W^T` (`h` [n, d], `weight` [vocab, d]) against
/// `targets` \[n\]. On the CPU the logits are never held whole (see
/// [`fused::cross_entropy`]); elsewhere they are computed in f32 and go through
/// [`cross_entropy`].
pub fn head_cross_entropy(h: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if fused::usable_with_weight(&[h], weight) {
        return Ok(fused::cross_entropy::head_cross_entropy(h, weight, targets)?);
    }
    let logits = linear_forward(h, weight, None)?.to_dtype(DType::F32)?;
    cross_entropy(&logits, &Tensor::new(targets, h.device())?)
}

/// The composed versions: candle ops that all have a backward. The fallback off the CPU and in
/// half precision, and the reference the fused ops are tested against.
pub mod composed {
    use candle_core::{DType, Tensor, D};

    use crate::error::Result;

    /// `gelu_new`, which is candle's `gelu`.
    pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
        Ok(x.gelu()?)
    }

    /// `silu(g) * u`.
    pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
        Ok((g.silu()? * u)?)
    }

    // ANCHOR: softmax
    /// Softmax over the last dim, built from ops that all have a backward
    /// (not `softmax_last_dim`, which has none).
    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    }
    // ANCHOR_END: softmax

    /// LayerNorm with weight and bias.
    pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32)?)
    }

    /// RMSNorm. Half-precision input is normalized in f32, as transformers' `LlamaRMSNorm` does.
    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let dtype = x.dtype();
        let inner = if matches!(dtype, DType::BF16 | DType::F16) { DType::F32 } else { dtype };
        let xi = x.to_dtype(inner)?;
        let norm = xi.broadcast_div(&(xi.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?;
        Ok(norm.to_dtype(dtype)?.broadcast_mul(weight)?)
    }

    /// RoPE through candle's `rope_slow`.
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::rotary_emb::rope_slow(&x.contiguous()?, cos, sin)?)
    }

    /// [batch, seq, heads * hd] -> [batch, heads, seq, hd]
    pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, n) = x.dims3()?;
        Ok(x.reshape((b, t, heads, n / heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// [`super::self_attention`] from split heads, `rope` and [`super::causal_attention_masked`].
    pub fn self_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        kv_heads: usize,
        rope_tables: Option<(&Tensor, &Tensor)>,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (b, t, _) = q.dims3()?;
        let (mut q, mut k, v) = (split_heads(q, heads)?, split_heads(k, kv_heads)?, split_heads(v, kv_heads)?);
        if let Some((cos, sin)) = rope_tables {
            (q, k) = (rope(&q, cos, sin)?, rope(&k, cos, sin)?);
        }
        Ok(super::causal_attention_masked(&q, &k, &v, None, window)?.transpose(1, 2)?.reshape((b, t, ()))?)
    }
}

/// Row `i` of `table` [vocab, dim] for every id in `ids` [batch, seq]: [batch, seq, dim].
///
/// On the CPU a half-precision table gives f32 rows: there the base is stored in bf16 but the
/// activations are f32 (see [`crate::compute::bf16`]).
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let dim = table.dim(1)?;
    let rows = table.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, dim))?;
    Ok(match rows.dtype() {
        DType::BF16 | DType::F16 if rows.device().is_cpu() => rows.to_dtype(DType::F32)?,
        _ => rows,
    })
}

/// Causal self-attention for `q` [batch, heads, seq, head_dim] and `k`, `v` [batch, kv_heads,
/// kv_len, head_dim] with `kv_len = offset + seq` (the first `offset` positions come from a KV
/// cache). Each group of `heads / kv_heads` query heads shares one key/value head (grouped-query
/// attention, Ainslie et al. 2023); GPT-2 has `kv_heads == heads`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    causal_attention_masked(q, k, v, None, None)
}

/// [`causal_attention`] with an additive `key_mask` [batch, 1, 1, kv_len] added to every
/// query's scores (the padding of a left-padded batch: see `models::KvCache::left_padded`), and
/// a sliding window when `window` is given: the query at position `p` sees keys `p + 1 - window
/// ..= p` only.
pub fn causal_attention_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
    window: Option<usize>,
) -> Result<Tensor> {
    check_window(window)?;
    let (b, heads, seq, hd) = q.dims4()?;
    let (_, kv_heads, kv_len, _) = k.dims4()?;
    let groups = heads / kv_heads;
    let offset = kv_len - seq;
    // Fold the query heads of a group into the sequence axis, so one matmul per kv head serves
    // the whole group without copying K and V `groups` times.
    let q = q.reshape((b, kv_heads, groups * seq, hd))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let mask = causal_mask(groups, seq, offset, window, q.dtype(), q.device())?;
    let mut scores = scores.broadcast_add(&mask)?;
    if let Some(key_mask) = key_mask {
        scores = scores.broadcast_add(key_mask)?;
    }
    let probs = softmax_last(&scores)?;
    Ok(probs.matmul(v)?.reshape((b, heads, seq, hd))?)
}

/// An additive mask [groups * seq, offset + seq]: 0 where query `i` (at position `offset + i`)
/// may look at key `j`, minus infinity where `j` is in its future or, with a window, too far back.
fn causal_mask(
    groups: usize,
    seq: usize,
    offset: usize,
    window: Option<usize>,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let kv_len = offset + seq;
    let mask: Vec<f32> = (0..groups * seq)
        .flat_map(|row| {
            let pos = offset + row % seq;
            let first = fused::attention::first_key(pos, window);
            (0..kv_len).map(move |j| if (first..=pos).contains(&j) { 0.0 } else { f32::NEG_INFINITY })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (groups * seq, kv_len), device)?.to_dtype(dtype)?)
}

/// Mean cross-entropy of `logits` [n, vocab] against `targets` \[n\] (u32), through log-softmax
/// and a gather: every op has a backward. Issue 4's training loss adds label masking.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}
