//! The seed's load-and-infer flow in one call: a base model, an adapter folder in PEFT's format
//! (ours or one PEFT saved), and the model ready to generate, with the adapter beside the base or
//! merged into it. `examples/generate.rs --adapter DIR [--merged]` is this function.

use std::path::Path;

use crate::error::Result;
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::tasks::t04_save_load::load_lora_weights;
use crate::tasks::t08_merge::merge_lora_weights;

/// Put the adapters of `dir` on the base: t04's `load_lora_weights` reads `adapter_config.json`
/// (rank, alpha, target modules), checks every key and shape, and builds an adapter on each
/// target module (the seed's "inject" and "load" in one, so nothing random is drawn first). If
/// `merged`, the adapters are then folded into the base weights (W0 + scaling B A) and the model
/// runs as a plain model. Returns the adapter's config.
pub fn load_adapter_for_inference(model: &mut dyn LoraModel, dir: &Path, merged: bool) -> Result<LoraConfig> {
    let config = load_lora_weights(model, dir)?;
    if merged {
        merge_lora_weights(model)?;
    }
    Ok(config)
}
