//! Task 1.4: save and load only the adapter, in Hugging Face PEFT's format.
//!
//! An adapter is a few MB where the model is hundreds: save A and B of every adapted layer, and
//! the config needed to rebuild them, and nothing of the base. PEFT's `save_pretrained` writes
//! `adapter_config.json` and `adapter_model.safetensors` (keys in [`crate::peft::format`]); we write the
//! same files ([`crate::peft::file`] writes and reads them), so `PeftModel.from_pretrained` can load
//! ours and we can load PEFT's. This task maps a model's adapters to keyed tensors and back;
//! loading checks the whole file against the model before changing anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{LoraError, Result};
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::peft::file::{write_adapter, AdapterFile};
use crate::peft::format::{peft_key, AdapterConfig, LoraMatrix};
use crate::tasks::t01_lora_layer::LoraLayer;
use crate::tasks::t03_inject::{find_target_modules, freeze_base_model};

/// The `target_modules` to write: the last name part of each adapted module if those select
/// exactly the adapted modules (what PEFT writes), otherwise the full module names.
fn saved_targets(model: &dyn LoraModel, adapted: &[String]) -> Vec<String> {
    let mut short: Vec<String> = adapted.iter().map(|n| n.rsplit('.').next().unwrap_or(n).to_string()).collect();
    short.sort();
    short.dedup();
    match find_target_modules(model, &short) {
        Ok(selected) if selected == adapted => short,
        _ => adapted.to_vec(),
    }
}

// ANCHOR: save
/// Every adapter of `model` as PEFT keys it: `base_model.model.<module>.lora_A.weight` (A
/// [r, in]) and `.lora_B.weight` (B [out, r]). Each adapter's rank must be `config.r`.
pub fn lora_tensors(model: &dyn LoraModel, config: &LoraConfig) -> Result<BTreeMap<String, Tensor>> {
    config.validate()?;
    let mut tensors = BTreeMap::new();
    for (name, slot) in model.linears() {
        let Some(lora) = slot.adapter() else { continue };
        if lora.rank() != config.r {
            return Err(LoraError::module(
                &name,
                format!("has rank {}, the config says r = {}", lora.rank(), config.r),
            ));
        }
        tensors.insert(peft_key(&name, LoraMatrix::A), lora.a().tensor().clone());
        tensors.insert(peft_key(&name, LoraMatrix::B), lora.b().tensor().clone());
    }
    if tensors.is_empty() {
        return Err(LoraError::config("model", "has no LoRA adapters to save; call inject_lora first"));
    }
    Ok(tensors)
}

/// The `adapter_config.json` PEFT needs to rebuild `model`'s adapters.
pub fn adapter_config(model: &dyn LoraModel, config: &LoraConfig) -> AdapterConfig {
    let adapted: Vec<String> =
        model.linears().into_iter().filter(|(_, s)| s.adapter().is_some()).map(|(n, _)| n).collect();
    let mut saved = config.clone();
    saved.target_modules = saved_targets(model, &adapted);
    let mut adapter_config = AdapterConfig::from_lora_config(&saved, &model.name_or_path());
    // GPT-2 stores its linears as Conv1D; PEFT records that (and would warn and fix it if not).
    adapter_config.fan_in_fan_out = model.conv1d_layout();
    adapter_config
}

/// Write the adapters of `model` to `dir` as `adapter_model.safetensors` and
/// `adapter_config.json`. Each file is written atomically.
pub fn save_lora_weights(model: &dyn LoraModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    let tensors = lora_tensors(model, config)?;
    write_adapter(dir, &adapter_config(model, config), &tensors)
}
// ANCHOR_END: save

// ANCHOR: load
/// Load the adapter saved in `dir` into `model` and return its config: [`load_lora_tensors`]
/// from the folder's files.
pub fn load_lora_weights(model: &mut dyn LoraModel, dir: &Path) -> Result<LoraConfig> {
    let file = AdapterFile::read(dir)?;
    let config = file.lora_config()?;
    load_lora_tensors(model, &config, &file, &[])?;
    Ok(config)
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
    // Where adapters go, and the shapes their A and B must have.
    let already: Vec<String> =
        model.linears().into_iter().filter(|(_, s)| s.adapter().is_some()).map(|(n, _)| n).collect();
    let modules = if already.is_empty() { find_target_modules(model, &config.target_modules)? } else { already };
    let layout: HashMap<String, _> =
        model.linears().into_iter().map(|(n, s)| (n, (s.in_out_features(), s.device().clone()))).collect();

    let mut problems = Vec::new();
    let mut expected_keys: HashSet<String> = other_keys.iter().cloned().collect();
    let mut loaded: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    for module in &modules {
        let ((in_f, out_f), device) = &layout[module];
        let mut pair = Vec::new();
        for (matrix, shape) in [(LoraMatrix::A, [config.r, *in_f]), (LoraMatrix::B, [*out_f, config.r])] {
            let key = peft_key(module, matrix);
            match file.tensor(&key, &shape, DType::F32, device) {
                Ok(t) => pair.push(t),
                Err(problem) => problems.push(problem),
            }
            expected_keys.insert(key);
        }
        if let (Some(b), Some(a)) = (pair.pop(), pair.pop()) {
            loaded.insert(module.clone(), (a, b));
        }
    }
    for key in file.keys() {
        if !expected_keys.contains(&key) {
            let found = file.shape(&key).unwrap_or_default();
            problems.push(crate::error::TensorProblem::Unexpected { name: key, found });
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.to_string());
        return Err(LoraError::AdapterMismatch { path: file.path().to_path_buf(), problems });
    }

    // Everything checked: build all layers, then install them, so a failure cannot half-load.
    let mut layers = HashMap::new();
    for (name, slot) in model.linears() {
        if let Some((a, b)) = loaded.get(&name) {
            let lora = LoraLayer::from_tensors(a, b, config)?;
            // The slot's base with this adapter beside it, built aside: nothing is installed yet.
            layers.insert(name, slot.with_adapter(lora)?);
        }
    }
    for (name, slot) in model.linears_mut() {
        if let Some(layer) = layers.remove(&name) {
            *slot = layer;
        }
    }
    freeze_base_model(model);
    Ok(())
}
// ANCHOR_END: load
