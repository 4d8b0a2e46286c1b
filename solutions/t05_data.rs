//! Task 2.1: turn (prompt, response) pairs into training batches.
//!
//! Instruction tuning trains the model to write the response, not to repeat the prompt, so the
//! loss counts only response tokens (and the end-of-sequence token that teaches it to stop):
//! every prompt and padding position gets the label `IGNORE_INDEX`, as in transformers'
//! `DataCollatorForSeq2Seq` and Alpaca's training script.

use candle_core::{Device, Tensor};

use crate::error::{LoraError, Result};

/// The label of a position that is not trained on (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One tokenized training example: `labels[i]` is the token at position `i` when it is trained
/// on, `IGNORE_INDEX` otherwise (the model's loss shifts labels by one itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// How many tokens truncation cut from the end.
    pub truncated: usize,
}

/// A padded batch: every tensor is [batch, seq].
#[derive(Clone, Debug)]
pub struct Batch {
    /// Token ids (u32), padded on the right with the pad id.
    pub input_ids: Tensor,
    /// Labels (i64), `IGNORE_INDEX` at prompt and padding positions.
    pub labels: Tensor,
    /// 1 (u32) at real tokens, 0 at padding. With right padding and causal attention no real
    /// token ever attends to a pad, so the models need no mask; losses and token counts use it.
    pub attention_mask: Tensor,
}

// ANCHOR: tokenize
/// `prompt + response + [eos]` as one sequence, labels masked over the prompt, cut to at most
/// `max_len` tokens from the end. An empty response still trains the EOS token.
pub fn tokenize_example(prompt: &[u32], response: &[u32], eos_id: u32, max_len: usize) -> Result<Example> {
    if max_len == 0 {
        return Err(LoraError::config("max_len", "must be at least 1"));
    }
    let mut input_ids: Vec<u32> = prompt.iter().chain(response).copied().collect();
    input_ids.push(eos_id);
    let mut labels: Vec<i64> = vec![IGNORE_INDEX; prompt.len()];
    labels.extend(response.iter().map(|&t| i64::from(t)));
    labels.push(i64::from(eos_id));
    let truncated = input_ids.len().saturating_sub(max_len);
    input_ids.truncate(max_len);
    labels.truncate(max_len);
    Ok(Example { input_ids, labels, truncated })
}
// ANCHOR_END: tokenize

// ANCHOR: collate
/// Pad `examples` on the right to the longest one: ids with `pad_id`, labels with
/// `IGNORE_INDEX`, and a mask of 1 at real tokens.
pub fn collate(examples: &[Example], pad_id: u32, device: &Device) -> Result<Batch> {
    let len = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    if len == 0 {
        return Err(LoraError::config("batch", "is empty: no examples, or only empty ones"));
    }
    let (mut ids, mut labels, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for e in examples {
        if e.labels.len() != e.input_ids.len() {
            return Err(LoraError::config("example", "has a different number of labels and input ids"));
        }
        let pad = len - e.input_ids.len();
        ids.extend(e.input_ids.iter().copied().chain(std::iter::repeat_n(pad_id, pad)));
        labels.extend(e.labels.iter().copied().chain(std::iter::repeat_n(IGNORE_INDEX, pad)));
        mask.extend(std::iter::repeat_n(1u32, e.input_ids.len()).chain(std::iter::repeat_n(0, pad)));
    }
    let shape = (examples.len(), len);
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, shape, device)?,
        labels: Tensor::from_vec(labels, shape, device)?,
        attention_mask: Tensor::from_vec(mask, shape, device)?,
    })
}
// ANCHOR_END: collate
