//! Task 1.4: save and load only the adapter, in Hugging Face PEFT's format.
//!
//! An adapter is a few MB where the model is hundreds: save A and B of every adapted layer, and
//! the config needed to rebuild them, and nothing of the base. PEFT's `save_pretrained` writes
//! `adapter_config.json` and `adapter_model.safetensors` (keys in [`crate::peft`]); we write the
//! same files, so `PeftModel.from_pretrained` can load ours and we can load PEFT's.
//! Loading checks the whole file against the model before changing anything.

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

/// Metadata key prefix under which we store each tensor's CRC-32. PEFT ignores it; we use it to
/// name a tensor whose bytes were damaged on disk.
const CRC_PREFIX: &str = "lora_from_scratch.crc32.";

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
/// Write the adapters of `model` to `dir` as `adapter_model.safetensors` and
/// `adapter_config.json`. Each file is written atomically.
pub fn save_lora_weights(model: &dyn LoraModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    config.validate()?;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut adapted = Vec::new();
    for (name, slot) in model.linears() {
        let Some(lora) = slot.adapter() else { continue };
        if lora.rank() != config.r {
            return Err(LoraError::module(
                &name,
                format!("has rank {}, the config says r = {}", lora.rank(), config.r),
            ));
        }
        tensors.insert(peft_key(&name, LoraMatrix::A), lora.a().tensor().contiguous()?);
        tensors.insert(peft_key(&name, LoraMatrix::B), lora.b().tensor().contiguous()?);
        adapted.push(name);
    }
    if adapted.is_empty() {
        return Err(LoraError::config("model", "has no LoRA adapters to save; call inject_lora first"));
    }
    // transformers reads "format": "pt"; the checksums let `load_lora_weights` name a damaged tensor.
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    for (key, t) in &tensors {
        metadata.insert(format!("{CRC_PREFIX}{key}"), crc32_hex(&t.data()));
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = safetensors::serialize(&tensors, Some(metadata))
        .map_err(|e| LoraError::file(&weights_path, format!("cannot serialize: {e}")))?;

    let mut saved = config.clone();
    saved.target_modules = saved_targets(model, &adapted);
    let mut adapter_config = AdapterConfig::from_lora_config(&saved, &model.name_or_path());
    // GPT-2 stores its linears as Conv1D; PEFT records that (and would warn and fix it if not).
    adapter_config.fan_in_fan_out = model.conv1d_layout();
    let json = serde_json::to_string_pretty(&adapter_config).expect("AdapterConfig always serializes");

    std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    write_atomic(&weights_path, &bytes)?;
    write_atomic(&dir.join(ADAPTER_CONFIG_FILE), json.as_bytes())
}
// ANCHOR_END: save

/// Read and check `adapter_config.json`.
fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = read_file(&path)?;
    let config: AdapterConfig = serde_json::from_slice(&text)
        .map_err(|e| LoraError::file(&path, format!("is not a valid PEFT adapter config: {e}")))?;
    config.to_lora_config().map_err(|e| LoraError::file(&path, e.to_string()))
}

// ANCHOR: load
/// Load the adapter saved in `dir` into `model` and return its config.
///
/// If the model already has adapters, the file must hold exactly those modules; otherwise the
/// file's `target_modules` choose where adapters go, as PEFT's `from_pretrained` does. Every key
/// and shape is checked first; on any problem the error lists each missing, unexpected,
/// mis-shaped or corrupt tensor and the model is left unchanged. Loaded adapters replace the
/// model's (trainable, f32) and the base is frozen.
pub fn load_lora_weights(model: &mut dyn LoraModel, dir: &Path) -> Result<LoraConfig> {
    let config = read_adapter_config(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = read_file(&path)?;
    let corrupt =
        |e: safetensors::SafeTensorError| LoraError::file(&path, format!("is not a valid safetensors file: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let checksums = header.metadata().clone().unwrap_or_default();

    // Where adapters go, and the shapes their A and B must have.
    let already: Vec<String> =
        model.linears().into_iter().filter(|(_, s)| s.adapter().is_some()).map(|(n, _)| n).collect();
    let modules = if already.is_empty() { find_target_modules(model, &config.target_modules)? } else { already };
    let layout: HashMap<String, ((usize, usize), Device)> =
        model.linears().into_iter().map(|(n, s)| (n, (s.features(), s.device().clone()))).collect();

    let mut problems = Vec::new();
    let mut expected_keys = HashSet::new();
    let mut loaded: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    for module in &modules {
        let ((in_f, out_f), device) = &layout[module];
        let (in_f, out_f) = (*in_f, *out_f);
        let mut pair = Vec::new();
        for (matrix, shape) in [(LoraMatrix::A, vec![config.r, in_f]), (LoraMatrix::B, vec![out_f, config.r])] {
            let key = peft_key(module, matrix);
            expected_keys.insert(key.clone());
            let Ok(view) = file.tensor(&key) else {
                problems.push(TensorProblem::Missing { name: key, expected: shape });
                continue;
            };
            if view.shape() != shape.as_slice() {
                problems.push(TensorProblem::Shape { name: key, expected: shape, found: view.shape().to_vec() });
                continue;
            }
            if let Some(crc) = checksums.get(&format!("{CRC_PREFIX}{key}")) {
                let found = crc32_hex(view.data());
                if &found != crc {
                    let why = format!("CRC-32 {found} does not match the saved {crc}");
                    problems.push(TensorProblem::Corrupt { name: key, why });
                    continue;
                }
            }
            let t = view.load(device)?.to_dtype(DType::F32)?;
            // A sum propagates NaN and inf from any entry (a max would skip NaN); f64 so that
            // large finite values cannot overflow it.
            if t.to_dtype(DType::F64)?.abs()?.sum_all()?.to_scalar::<f64>()?.is_finite() {
                pair.push(t);
            } else {
                problems.push(TensorProblem::Corrupt { name: key, why: "holds NaN or inf".into() });
            }
        }
        if let (Some(b), Some(a)) = (pair.pop(), pair.pop()) {
            loaded.insert(module.clone(), (a, b));
        }
    }
    for key in file.names() {
        if !expected_keys.contains(key) {
            let found = file.tensor(key).map(|v| v.shape().to_vec()).unwrap_or_default();
            problems.push(TensorProblem::Unexpected { name: key.to_string(), found });
        }
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.to_string());
        return Err(LoraError::AdapterMismatch { path, problems });
    }

    // Everything checked: build all layers, then install them, so a failure cannot half-load.
    let mut layers = HashMap::new();
    for (name, slot) in model.linears() {
        if let Some((a, b)) = loaded.get(&name) {
            let lora = LoraLayer::from_tensors(a, b, &config)?;
            let layer = match slot {
                // QLoRA (t09): a quantized base keeps its quantized weight; the adapter goes beside it.
                LinearSlot::Quantized(q) => {
                    let mut q = q.clone();
                    q.take_adapter();
                    q.set_adapter(lora)?;
                    LinearSlot::Quantized(q)
                }
                _ => LinearSlot::Lora(LinearWithLora::new(&slot.base_weight()?, slot.base_bias(), lora)?),
            };
            layers.insert(name, layer);
        }
    }
    for (name, slot) in model.linears_mut() {
        if let Some(layer) = layers.remove(&name) {
            *slot = layer;
        }
    }
    freeze_base_model(model);
    Ok(config)
}
// ANCHOR_END: load
