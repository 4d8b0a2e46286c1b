//! The seed's load-and-infer flow in one call: a base model, an adapter folder in PEFT's format
//! (ours or one PEFT saved), and the model ready to generate, with the adapter beside the base or
//! merged into it. `examples/generate.rs --adapter DIR [--merged]` is this function.

use std::path::Path;

use crate::error::Result;
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::peft::file::AdapterFile;
use crate::tasks::t03_inject::inject_lora;
use crate::tasks::t04_save_load::load_lora_weights;
use crate::tasks::t08_merge::merge_lora_weights;

/// Inject the adapters `dir`'s `adapter_config.json` describes (its rank, alpha and target
/// modules), load its weights (every key and shape checked before anything changes), and, if
/// `merged`, fold them into the base weights (W0 + scaling B A), so that the model runs as a plain
/// model. Returns the adapter's config.
pub fn load_adapter_for_inference(model: &mut dyn LoraModel, dir: &Path, merged: bool) -> Result<LoraConfig> {
    let config = AdapterFile::read(dir)?.lora_config()?;
    inject_lora(model, &config)?;
    load_lora_weights(model, dir)?;
    if merged {
        merge_lora_weights(model)?;
    }
    Ok(config)
}
