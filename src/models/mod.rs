//! Models whose linear layers can carry adapters: GPT-2 ([`gpt2`]), the Llama family with
//! SmolLM2 as its target ([`llama`]; Qwen2 / Qwen2.5 and Mistral too, see [`family`]), and
//! [`tiny`], the small test model the graders use.
//! [`load`] finds a model's files (a folder, a GGUF file, the Hub) and builds the right one;
//! [`weights`] and [`gguf`] read the files, [`tokenizer`] the tokenizers; `table` turns each
//! model's fields, named as Hugging Face names its modules, into the names LoRA sees. This module holds the
//! [`CausalLm`] trait every model implements.
//!
//! May use: `error`, `io`, `fetch` (model files), `compute` (the ops and quantized weight formats), `lora`.

pub mod family;
pub mod gguf;
pub mod gpt2;
pub mod llama;
pub mod load;
pub(crate) mod table;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::lora::slot::LinearSlot;

use crate::lora::model::LoraModel;

/// Keys and values of the positions seen so far, one entry per layer, so that generation feeds
/// only the new token instead of the whole sequence at every step.
///
/// A cache can also describe a batch of prompts of different lengths padded on the left to one
/// width ([`KvCache::left_padded`]): row i's first `pads[i]` columns are padding. The models then
/// give each real token the position it would have alone (its column minus `pads[i]`) and let
/// no query attend to a padding key, so that every row decodes as it would alone
/// ([`crate::inference::generate::greedy_batch`]).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Padding columns at the left of each row, for a left-padded batch.
    left_pad: Option<Vec<usize>>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![None; num_layers], left_pad: None }
    }

    /// This (empty) cache for a batch whose row i starts with `pads[i]` padding columns.
    pub fn left_padded(mut self, pads: Vec<usize>) -> Result<Self> {
        if !self.is_empty() {
            return Err(crate::error::LoraError::input("KV cache", "padding is set before the first forward pass"));
        }
        self.left_pad = Some(pads);
        Ok(self)
    }

    /// For a left-padded batch: the position of each of the `t` new columns of each row
    /// (column minus the row's padding; 0 on padding), [batch][t]. Checks the batch size.
    pub(crate) fn row_positions(&self, batch: usize, t: usize) -> Result<Option<Vec<Vec<u32>>>> {
        let Some(pads) = &self.left_pad else { return Ok(None) };
        if pads.len() != batch {
            return Err(crate::error::LoraError::shape(
                "token ids of a left-padded batch",
                format!("[{}, seq]", pads.len()),
                &[batch, t],
            ));
        }
        let offset = self.len();
        Ok(Some(pads.iter().map(|&p| (offset..offset + t).map(|c| c.saturating_sub(p) as u32).collect()).collect()))
    }

    /// For a left-padded batch: an additive mask [batch, 1, 1, kv_len] over the keys, 0 for a
    /// real token and -1e9 for padding. Finite, so that a padding query, which sees only
    /// padding, averages it instead of producing NaN that its keys would carry on.
    pub(crate) fn key_mask(&self, kv_len: usize, dtype: candle_core::DType, device: &Device) -> Result<Option<Tensor>> {
        let Some(pads) = &self.left_pad else { return Ok(None) };
        let mask: Vec<f32> =
            pads.iter().flat_map(|&p| (0..kv_len).map(move |c| if c < p { -1e9 } else { 0.0 })).collect();
        Ok(Some(Tensor::from_vec(mask, (pads.len(), 1, 1, kv_len), device)?.to_dtype(dtype)?))
    }

    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append this step's `k`, `v` [batch, kv_heads, seq, head_dim] to layer `layer`'s cache and
    /// return the keys and values of every position so far.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let entry = &mut self.layers[layer];
        let (k, v) = match entry.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        *entry = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// A causal language model that hosts adapters.
pub trait CausalLm: LoraModel {
    /// The final hidden states [batch, seq, hidden] for token ids [batch, seq]. With a cache,
    /// `ids` are the positions after the cached ones, and the cache grows by them. `train`
    /// switches adapter dropout on.
    fn forward_hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>, train: bool) -> Result<Tensor>;

    /// Logits [..., vocab] for hidden states [..., hidden] (the output head).
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;

    /// The output head's weight [vocab, d] when the head is a plain linear map without bias
    /// (tied to the embeddings or not); `None` when it carries an adapter.
    fn head_weight(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Mean cross-entropy of the head's logits on `hidden` [n, d] against `targets` \[n\]. With a
    /// plain head this is [`crate::compute::ops::head_cross_entropy`], which on the CPU never holds the
    /// [n, vocab] logits; otherwise the logits (in f32) and [`crate::compute::ops::cross_entropy`].
    fn head_loss(&self, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
        match self.head_weight()? {
            Some(w) => crate::compute::ops::head_cross_entropy(hidden, &w, targets),
            None => {
                let logits = self.logits(hidden)?.to_dtype(candle_core::DType::F32)?;
                crate::compute::ops::cross_entropy(&logits, &Tensor::new(targets, hidden.device())?)
            }
        }
    }

    /// Logits [batch, seq, vocab] for token ids [batch, seq].
    fn forward(&self, ids: &Tensor, cache: Option<&mut KvCache>, train: bool) -> Result<Tensor> {
        self.logits(&self.forward_hidden(ids, cache, train)?)
    }

    /// A fresh, empty cache for this model.
    fn new_cache(&self) -> KvCache;

    /// Size of the vocabulary.
    fn vocab_size(&self) -> usize;

    /// The longest sequence the model can take: GPT-2's learned positions, a Llama's
    /// `max_position_embeddings`; `None` when its config names no limit.
    fn max_positions(&self) -> Option<usize>;

    /// The device the weights live on.
    fn device(&self) -> &Device;

    /// The model's `config.json` as transformers reads it.
    fn hf_config(&self) -> serde_json::Value;

    /// Every weight under its Hugging Face name and in the checkpoint's layout (GPT-2's Conv1D
    /// [in, out], `c_attn` fused), tied weights once. An adapter still in a slot is an error:
    /// merge first.
    fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>>;
}

/// The weight and bias of a slot that holds no adapter, or an error naming the module. A
/// quantized base is exported dequantized, in f32.
pub(crate) fn plain_weights(name: &str, slot: &LinearSlot) -> Result<(Tensor, Option<Tensor>)> {
    if let Some(why) = slot.why_not_plain() {
        return Err(crate::error::LoraError::module(name, format!("{why} before exporting")));
    }
    Ok((slot.base_weight()?, slot.base_bias().cloned()))
}

/// Check token ids before they index an embedding table: a [batch, seq] tensor of ids below
/// `vocab`, with room for them after `offset` cached positions.
pub(crate) fn check_ids(
    ids: &Tensor,
    vocab: usize,
    offset: usize,
    max_positions: Option<usize>,
) -> Result<(usize, usize)> {
    let (b, t) = ids.dims2().map_err(|_| crate::error::LoraError::shape("token ids", "[batch, seq]", ids.dims()))?;
    if t == 0 {
        return Err(crate::error::LoraError::shape("token ids", "[batch, seq] with seq > 0", ids.dims()));
    }
    let max_id = ids.to_dtype(candle_core::DType::U32)?.flatten_all()?.max(0)?.to_scalar::<u32>()?;
    if max_id as usize >= vocab {
        return Err(crate::error::LoraError::input(
            "token ids",
            format!("contain id {max_id}, the vocabulary has {vocab}"),
        ));
    }
    if let Some(max) = max_positions {
        if offset + t > max {
            return Err(crate::error::LoraError::input(
                "sequence",
                format!("{} positions ({offset} cached + {t} new) exceed the model's {max}", offset + t),
            ));
        }
    }
    Ok((b, t))
}
