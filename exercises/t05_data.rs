//! Task 2.1: turn (prompt, response) pairs into training batches.
//!
//! Instruction tuning trains the model to write the response, not to repeat the prompt, so the
//! loss counts only response tokens (and the end-of-sequence token that teaches it to stop):
//! every prompt and padding position gets the label `IGNORE_INDEX`, as in transformers'
//! `DataCollatorForSeq2Seq` and Alpaca's training script. Read book/src/t05_data.md beside this
//! file. Grade it with `cargo test --features exercises --test t05_data`.
#![allow(unused_variables, unused_imports)]

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

/// `prompt + response + [eos]` as one sequence, labels masked over the prompt, cut to at most
/// `max_len` tokens from the end. An empty response still trains the EOS token.
pub fn tokenize_example(prompt: &[u32], response: &[u32], eos_id: u32, max_len: usize) -> Result<Example> {
    // TODO: input_ids = prompt, then response, then eos_id; labels of the same length: IGNORE_INDEX
    // over the prompt, the token itself (as i64) over the response and the EOS. Both are cut from
    // the end to at most max_len tokens, and `truncated` says how many were cut. max_len == 0 fits
    // nothing and is an error (`LoraError::config`).
    // Book: "Which tokens the loss sees", "Truncation".
    todo!("t05: tokenize_example")
}

/// Pad `examples` on the right to the longest one: ids with `pad_id`, labels with
/// `IGNORE_INDEX`, and a mask of 1 at real tokens.
pub fn collate(examples: &[Example], pad_id: u32, device: &Device) -> Result<Batch> {
    // TODO: three [batch, len] tensors, len the longest example: ids (u32) padded on the right with
    // pad_id, labels (i64) padded with IGNORE_INDEX, attention mask (u32) 1 at real tokens and 0 at
    // padding; real tokens unchanged. No examples, or only empty ones, is an error.
    // Book: "Padding and the mask".
    todo!("t05: collate")
}
