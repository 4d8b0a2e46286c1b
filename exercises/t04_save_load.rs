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
    // TODO: validate the config; for every adapted slot (`slot.adapter()`), put A and B under
    // `peft_key(name, LoraMatrix::A)` and `peft_key(name, LoraMatrix::B)`. An adapter whose rank
    // is not config.r, or a model with no adapter at all, is an error. Book: "PEFT's keys".
    todo!("t04: lora_tensors")
}

/// The `adapter_config.json` PEFT needs to rebuild `model`'s adapters.
pub fn adapter_config(model: &dyn LoraModel, config: &LoraConfig) -> AdapterConfig {
    // TODO: `AdapterConfig::from_lora_config` of the config with `target_modules` set to the
    // adapted modules' names (their last name part when those select exactly the same modules,
    // as PEFT writes), base `model.name_or_path()`, and `fan_in_fan_out` set to
    // `model.conv1d_layout()` (true for GPT-2's Conv1D layers). Book: "PEFT's keys".
    todo!("t04: adapter_config")
}

/// Write the adapters of `model` to `dir` as `adapter_model.safetensors` and
/// `adapter_config.json`. Each file is written atomically.
pub fn save_lora_weights(model: &dyn LoraModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    // TODO: the tensors and the config above, written by `write_adapter`. Book: "Atomic writes".
    todo!("t04: save_lora_weights")
}

/// Load the adapter saved in `dir` into `model` and return its config: [`load_lora_tensors`]
/// from the folder's files.
pub fn load_lora_weights(model: &mut dyn LoraModel, dir: &Path) -> Result<LoraConfig> {
    // TODO: `AdapterFile::read(dir)` (it fails on a missing, truncated or garbled file), its
    // `lora_config()`, then `load_lora_tensors` with no other keys.
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
    // TODO:
    // 1. Decide the modules (the adapted ones, or `find_target_modules` with the config's
    //    targets) and the shape each A [r, in] and B [out, r] must have.
    // 2. Read each with `file.tensor(key, shape, DType::F32, slot's device)`; it answers a
    //    `TensorProblem` (Missing, Shape, Corrupt) when something is wrong. Keys of the file that
    //    are neither expected nor in `other_keys` are `TensorProblem::Unexpected`.
    // 3. Any problem: return `LoraError::AdapterMismatch { path: file.path(), problems }`.
    // 4. Only then build every `LoraLayer::from_tensors`, each slot's replacement
    //    (`slot.with_adapter(lora)`), install them all, and freeze the base.
    //    Book: "Never half-load".
    todo!("t04: load_lora_tensors")
}
