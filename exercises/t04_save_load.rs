//! Task 1.4: save and load only the adapter, in Hugging Face PEFT's format.
//!
//! Read book/src/t04_save_load.md beside this file. Grade it with
//! `cargo test --features exercises --test t04_save_load`.
#![allow(unused_variables, unused_imports)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{LoraError, Result, TensorProblem};
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::peft::file::{write_adapter, AdapterFile};
use crate::peft::format::{peft_key, AdapterConfig, LoraMatrix};
use crate::tasks::t01_lora_layer::LoraLayer;
use crate::tasks::t03_inject::{find_target_modules, freeze_base_model};

/// Every adapter of `model` as PEFT keys it: `base_model.model.<module>.lora_A.weight` (A
/// [r, in]) and `.lora_B.weight` (B [out, r]). Each adapter's rank must be `config.r`.
pub fn lora_tensors(model: &dyn LoraModel, config: &LoraConfig) -> Result<BTreeMap<String, Tensor>> {
    // TODO: A and B of every adapter under PEFT's keys (`peft_key(module, LoraMatrix::A)` and
    // `LoraMatrix::B`), nothing of the base. An invalid config, an adapter whose rank is not
    // config.r, or a model with no adapter at all is an error.
    // Book: "PEFT's keys".
    todo!("t04: lora_tensors")
}

/// The `adapter_config.json` PEFT needs to rebuild `model`'s adapters.
pub fn adapter_config(model: &dyn LoraModel, config: &LoraConfig) -> AdapterConfig {
    // TODO: the `AdapterConfig` of `config` for this model: `target_modules` as PEFT writes them
    // (the last name part of each adapted module when those select exactly the adapted modules
    // again, the full names otherwise), the base model's `name_or_path()`, and `fan_in_fan_out` set
    // for a transposed layout (`model.conv1d_layout()`, true for GPT-2's Conv1D).
    // Book: "PEFT's keys".
    todo!("t04: adapter_config")
}

/// Write the adapters of `model` to `dir` as `adapter_model.safetensors` and
/// `adapter_config.json`. Each file is written atomically.
pub fn save_lora_weights(model: &dyn LoraModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    // TODO: the adapter's tensors and config written to `dir` as PEFT's two files, each atomically,
    // so that a failed save leaves the previous files intact. Errors of the two functions above
    // pass through.
    // Book: "Atomic writes".
    todo!("t04: save_lora_weights")
}

/// Load the adapter saved in `dir` into `model` and return its config: [`load_lora_tensors`]
/// from the folder's files.
pub fn load_lora_weights(model: &mut dyn LoraModel, dir: &Path) -> Result<LoraConfig> {
    // TODO: read the folder (a missing, truncated or garbled file is an error naming it), load its
    // tensors into `model` with no other keys expected, and return the folder's LoRA config.
    // Book: "Never half-load".
    todo!("t04: load_lora_weights")
}

/// Put the adapters stored in `file` into `model`.
///
/// If the model already has adapters, the file must hold exactly those modules; otherwise the
/// config's `target_modules` choose where adapters go, as PEFT's `from_pretrained` does. Every
/// key and shape is checked first; on any problem the error lists each missing, unexpected,
/// mis-shaped or corrupt tensor and the model is left unchanged. `other_keys` are keys that
/// belong to something else in the file (they are not unexpected). Loaded adapters replace the
/// model's (trainable, f32) and the base is frozen.
pub fn load_lora_tensors(
    model: &mut dyn LoraModel,
    config: &LoraConfig,
    file: &AdapterFile,
    other_keys: &[String],
) -> Result<()> {
    // TODO: checks first, changes after. The modules are the model's adapted ones, or else those
    // the config's targets select; each needs an A [r, in] and a B [out, r]. Every expected tensor
    // is checked (present, right shape, intact, finite: `AdapterFile::tensor` answers the
    // `TensorProblem`), and every key of the file that is neither expected nor in `other_keys` is
    // `TensorProblem::Unexpected`. Any problem: `LoraError::AdapterMismatch { path, problems }`
    // listing them all, and the model unchanged. Otherwise every listed module carries its loaded
    // adapter (trainable, f32) and the base is frozen.
    // Book: "Never half-load".
    todo!("t04: load_lora_tensors")
}
