//! Tokenizers: a Hugging Face `tokenizer.json`, or one built from a GGUF file's metadata, and
//! the chat template SmolLM2-Instruct was trained with.
//!
//! candle's `TokenizerFromGguf` builds the BPE from the GGUF vocabulary and merges, but for a
//! `tokenizer.ggml.pre` it does not know (SmolLM2's is `smollm`) it falls back to GPT-2's
//! pre-tokenizer, which adds a space in front of the text: every id after that differs from the
//! model's own tokenizer. SmolLM2's `tokenizer.json` uses byte-level pre-tokenization without the
//! prefix space; we set exactly that, and tests compare the ids with transformers' on hard
//! strings.

use std::path::Path;

use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::models::gguf::GgufFile;

/// Read a `tokenizer.json`.
pub(crate) fn from_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| LoraError::file(path, format!("is not a readable tokenizer.json: {e}")))
}

/// The tokenizer stored in a GGUF file's metadata.
pub(crate) fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_gguf(&gguf.content)
        .map_err(|e| LoraError::config("GGUF tokenizer", format!("cannot be built: {e}")))?;
    match gguf.meta_str("tokenizer.ggml.pre") {
        // candle builds these as their tokenizer.json does.
        Some("qwen2" | "llama3" | "smaug-bpe" | "lfm2") => {}
        // Byte-level BPE with no prefix space: SmolLM2's tokenizer.json (`smollm`), and GPT-2's own.
        _ => {
            tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        }
    }
    Ok(tok)
}

/// The ids of `text`, with no special tokens added (SmolLM2 adds none; the chat template writes
/// them as text).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok.encode(text, false).map_err(|e| LoraError::config("tokenizer", format!("cannot encode: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// The text of `ids`, special tokens included.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String> {
    tok.decode(ids, false).map_err(|e| LoraError::config("tokenizer", format!("cannot decode: {e}")))
}

/// The id of a token written as text, such as `<|im_end|>`.
pub fn token_id(tok: &Tokenizer, token: &str) -> Option<u32> {
    tok.token_to_id(token)
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// The system prompt SmolLM2-Instruct's template adds when the conversation has none.
const SMOLLM2_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The system prompt Qwen2.5-Instruct's template adds when the conversation has none.
pub(crate) const QWEN2_5_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// SmolLM2-Instruct's chat template (ChatML) written out: each message as
/// `<|im_start|>{role}\n{content}<|im_end|>\n`, a default system message first when there is
/// none, and `<|im_start|>assistant\n` at the end when a reply is wanted. The template in the
/// model's GGUF metadata says exactly this; the tokenizer turns the markers into their ids.
pub fn smollm2_chat_prompt(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    chat_ml_prompt(messages, SMOLLM2_SYSTEM, add_generation_prompt)
}

/// ChatML with `default_system` as the system message when the conversation has none: SmolLM2's
/// template with [`SMOLLM2_SYSTEM`], Qwen2.5's with [`QWEN2_5_SYSTEM`] (the same markers).
pub(crate) fn chat_ml_prompt(messages: &[ChatMessage], default_system: &str, add_generation_prompt: bool) -> String {
    let mut out = String::new();
    if messages.first().is_some_and(|m| m.role != "system") {
        out.push_str(&format!("<|im_start|>system\n{default_system}<|im_end|>\n"));
    }
    for m in messages {
        out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}
