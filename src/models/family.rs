//! The members of the Llama family this crate runs, and the only things that tell them apart.
//!
//! Qwen2 / Qwen2.5 (transformers' `Qwen2ForCausalLM`) and Mistral (`MistralForCausalLM`) are
//! Llama's block with the same module names (`model.layers.N.self_attn.q_proj`, ...), so one
//! model ([`super::llama::Llama`]) runs all three and a PEFT adapter for any of them names the
//! same modules. What differs is read from `config.json`:
//!
//! | family | `model_type` | biases | sliding window |
//! |---|---|---|---|
//! | Llama, SmolLM2 | `llama` | q, k, v, o when `attention_bias`; MLP when `mlp_bias` | none |
//! | Qwen2, Qwen2.5 | `qwen2` | q, k, v always; o and the MLP never | only with `use_sliding_window`, on the layers `layer_types` marks `sliding_attention` (else from `max_window_layers` on) |
//! | Mistral | `mistral` | none | `sliding_window` on every layer, when set |
//!
//! RoPE's base (`rope_theta`, 1e6 for Qwen2.5) and a tied or untied head are settings every
//! member reads the same way.

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};

/// Which member of the Llama family a config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Qwen2,
    Mistral,
}

impl Family {
    /// The family of a `model_type`, or an error naming the ones this crate runs.
    pub(crate) fn from_model_type(model_type: &str) -> Result<Self> {
        match model_type {
            "llama" => Ok(Family::Llama),
            "qwen2" => Ok(Family::Qwen2),
            "mistral" => Ok(Family::Mistral),
            other => Err(LoraError::config(
                "model_type",
                format!("is `{other}`; the Llama family here is `llama`, `qwen2` or `mistral`"),
            )),
        }
    }

    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Mistral => "mistral",
        }
    }

    /// transformers' class, for `architectures` in an exported `config.json`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
        }
    }

    /// Whether attention projection `j` (0 q, 1 k, 2 v, 3 o) has a bias. Llama's
    /// `attention_bias` covers all four; Qwen2 biases q, k and v only; Mistral none.
    pub fn attention_bias(self, j: usize, attention_bias: bool) -> bool {
        match self {
            Family::Llama => attention_bias,
            Family::Qwen2 => j < 3,
            Family::Mistral => false,
        }
    }

    /// Whether the MLP projections have biases (only Llama's `mlp_bias` can say yes).
    pub(crate) fn mlp_bias(self, mlp_bias: bool) -> bool {
        self == Family::Llama && mlp_bias
    }
}

/// The window settings a config may carry, as transformers writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowSettings<'a> {
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<&'a [String]>,
}

impl Family {
    /// The sliding window of layer `layer`, `None` for plain causal attention; computed as
    /// transformers' `Qwen2Config.__post_init__` and `MistralAttention` do.
    pub fn window(self, layer: usize, s: &WindowSettings) -> Option<usize> {
        match self {
            Family::Llama => None,
            Family::Mistral => s.sliding_window,
            Family::Qwen2 => {
                // `use_sliding_window: false` (Qwen2.5's configs) turns the window off whatever
                // `sliding_window` says.
                let window = s.sliding_window.filter(|_| s.use_sliding_window.unwrap_or(false))?;
                let sliding = match s.layer_types {
                    Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
                    None => layer >= s.max_window_layers.unwrap_or(28),
                };
                sliding.then_some(window)
            }
        }
    }
}
