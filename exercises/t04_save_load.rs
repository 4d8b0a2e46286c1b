//! Task 1.4: save and load only the adapter, in Hugging Face PEFT's format.
//!
//! Read book/src/t04_save_load.md beside this file. Grade it with
//! `cargo test --features exercises --test t04_save_load`.
#![allow(unused_variables, unused_imports)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{SafeTensors, View};

use crate::io::{crc32_hex, read_file, write_atomic};
use crate::peft::{peft_key, AdapterConfig, LoraMatrix, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::{
    find_target_modules, freeze_base_model, LinearSlot, LinearWithLora, LoraConfig, LoraError, LoraLayer, LoraModel,
    Result, TensorProblem,
};

/// Write the adapters of `model` to `dir` as `adapter_model.safetensors` and
/// `adapter_config.json`. Each file is written atomically.
pub fn save_lora_weights(model: &dyn LoraModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    // TODO:
    // 1. For every adapted slot (`slot.adapter()`), put A and B (contiguous) under `peft_key(name, LoraMatrix::A)`
    //    and `peft_key(name, LoraMatrix::B)`; an adapter whose rank is not config.r, or a model
    //    with no adapter at all, is an error.
    // 2. `safetensors::serialize(&tensors, Some(metadata))` with metadata {"format": "pt"} and,
    //    for each key, "lora_from_scratch.crc32.<key>" -> `crc32_hex(&tensor.data())`, so that
    //    loading can name a tensor whose bytes were damaged.
    // 3. `AdapterConfig::from_lora_config(config, &model.name_or_path())` as pretty JSON, with
    //    `fan_in_fan_out` set to `model.conv1d_layout()` (true for GPT-2's Conv1D layers).
    // 4. `create_dir_all(dir)`, then `write_atomic` both files (weights first).
    // Book: "PEFT's keys" and "Atomic writes".
    todo!("t04: save_lora_weights")
}

/// Load the adapter saved in `dir` into `model` and return its config.
///
/// If the model already has adapters, the file must hold exactly those modules; otherwise the
/// file's `target_modules` choose where adapters go, as PEFT's `from_pretrained` does. Every key
/// and shape is checked first; on any problem the error lists each missing, unexpected,
/// mis-shaped or corrupt tensor and the model is left unchanged. Loaded adapters replace the
/// model's (trainable, f32) and the base is frozen.
pub fn load_lora_weights(model: &mut dyn LoraModel, dir: &Path) -> Result<LoraConfig> {
    // TODO:
    // 1. Parse adapter_config.json into `AdapterConfig`, then `to_lora_config()`.
    // 2. Read the weights; `SafeTensors::read_metadata` and `SafeTensors::deserialize` fail on a
    //    truncated or garbled file: return `LoraError::file(path, ...)`.
    // 3. Decide the modules (the adapted ones, or `find_target_modules` with the config's
    //    targets) and the shape each A [r, in] and B [out, r] must have.
    // 4. Collect every problem as a `TensorProblem` (Missing, Unexpected, Shape, Corrupt: a
    //    checksum that does not match or a NaN / inf value) and return
    //    `LoraError::AdapterMismatch { path, problems }` if there is any.
    // 5. Only then build every `LoraLayer::from_tensors` (as f32) and install them all (a
    //    `LinearSlot::Quantized` slot, challenge t09, takes its adapter with `set_adapter`), and
    //    freeze the base. Book: "Never half-load".
    todo!("t04: load_lora_weights")
}
