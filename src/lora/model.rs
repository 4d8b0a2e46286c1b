//! The Rust `named_modules()`: how a model shows its linear layers to LoRA.
//!
//! A model implements [`LoraModel`] to list its [`LinearSlot`]s by their Hugging Face module
//! names (`model.layers.3.self_attn.q_proj`) and its other weights by parameter name.
//! `inject_lora`, saving, loading and merging are written once against this trait, so the real
//! models and the graders' small test model share them.
//!
//! May use: `compute`, `lora::{param, slot}`.

use crate::error::Result;
use crate::lora::param::Param;
use crate::lora::slot::LinearSlot;

/// A model whose linear layers can carry LoRA adapters.
///
/// Not PEFT's class of the same name: PEFT's `LoraModel` wraps a model and injects adapters into
/// it; this trait is what a model offers so that `inject_lora` (task 1.3) can: its slots and
/// weights by name, the Rust `named_modules()`.
///
/// Names follow Hugging Face: a linear slot is named like its module (`lm_head`,
/// `model.layers.0.mlp.up_proj`), any other weight like its parameter (`model.norm.weight`).
pub trait LoraModel {
    /// Every linear layer with its module name, in the model's order.
    fn linears(&self) -> Vec<(String, &LinearSlot)>;

    /// Every linear layer, mutably, in the same order as [`LoraModel::linears`].
    fn linears_mut(&mut self) -> Vec<(String, &mut LinearSlot)>;

    /// Every weight that is not inside a linear slot (embeddings, norms), by parameter name.
    fn params(&self) -> Vec<(String, &Param)>;

    /// Every weight that is not inside a linear slot, mutably.
    fn params_mut(&mut self) -> Vec<(String, &mut Param)>;

    /// Weights outside the linear slots that this model keeps quantized (QLoRA's embedding
    /// table), by parameter name. Their entry in [`LoraModel::params`] is a frozen stand-in with
    /// the right shape and no values (one zero, broadcast), there so that counting and freezing
    /// see every parameter; the model itself reads the quantized weight.
    fn quantized_params(&self) -> Vec<(String, std::sync::Arc<dyn crate::compute::quantized::QuantizedWeight>)> {
        Vec::new()
    }

    /// Keep the parameter `name` quantized as `weight` from now on. Returns false, changing
    /// nothing, where the model cannot (the default; Llama can for its embedding table).
    fn set_quantized_param(
        &mut self,
        name: &str,
        weight: std::sync::Arc<dyn crate::compute::quantized::QuantizedWeight>,
    ) -> Result<bool> {
        let _ = (name, weight);
        Ok(false)
    }

    /// The module name of the output head, if the model has a linear one. `"all-linear"` skips
    /// it, as PEFT does: adapting the head of a language model is rarely wanted.
    fn output_head(&self) -> Option<&str> {
        None
    }

    /// Where the base model came from (a Hub id or a folder), written to `adapter_config.json`.
    fn name_or_path(&self) -> String {
        String::new()
    }

    /// Whether the original checkpoint stores its linears as GPT-2's `Conv1D` ([in, out]); PEFT
    /// writes `fan_in_fan_out: true` for those.
    fn conv1d_layout(&self) -> bool {
        false
    }
}
