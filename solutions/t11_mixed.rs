//! Challenge 3 (t11): LoRA beside modules trained in full, each group at its own learning rate.
//!
//! Some weights are worth training whole next to the adapters: the norms, or a head for a new
//! task. PEFT calls them `modules_to_save`: they are selected by module name (a suffix match,
//! so `"norm"` selects every RMSNorm), trained in full, and saved in the adapter file under
//! their own names (`base_model.model.model.norm.weight`). Each kind of weight gets its own
//! learning rate through AdamW's parameter groups; LoRA+ (Hayou et al. 2024, arXiv 2402.12354)
//! is one such choice: B learns `ratio` times faster than A.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor, Var};
use safetensors::{SafeTensors, View};

use crate::io::{crc32_hex, read_file, write_atomic};

/// t04's checksum keys in the safetensors metadata (PEFT ignores them).
const CRC_PREFIX: &str = "lora_from_scratch.crc32.";
use crate::optim::ParamGroup;
use crate::peft::{AdapterConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PEFT_KEY_PREFIX};
use crate::{load_lora_weights, save_lora_weights, LinearSlot, LoraConfig, LoraError, LoraModel, Param, Result};

/// The parameter a `modules_to_save` key carries, e.g. `model.norm.weight`.
fn module_of(param: &str) -> &str {
    param.rsplit_once('.').map_or(param, |(m, _)| m)
}

// ANCHOR: find
/// The parameters `modules` selects, by name (`model.norm.weight`, `lm_head.weight`): every
/// weight outside the linear slots, and every plain linear layer's weight and bias, whose
/// module name ends with an entry (PEFT's rule). An entry that selects nothing, or selects a
/// layer that carries an adapter, is an error.
pub fn find_modules_to_save(model: &dyn LoraModel, modules: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in modules {
        let mut found = false;
        for (name, _) in model.params() {
            if module_of(&name).ends_with(entry.as_str()) {
                out.push(name);
                found = true;
            }
        }
        for (name, slot) in model.linears() {
            if !name.ends_with(entry.as_str()) {
                continue;
            }
            let LinearSlot::Linear(l) = slot else {
                return Err(LoraError::module(
                    name,
                    "carries an adapter; a module is trained either in full or with LoRA",
                ));
            };
            out.extend(l.named_params().into_iter().map(|(p, _)| format!("{name}.{p}")));
            found = true;
        }
        if !found {
            return Err(LoraError::config("modules_to_save", format!("`{entry}` matches no module of the model")));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
// ANCHOR_END: find

/// Make the parameters `modules` selects trainable; returns their `Var`s for the optimizer.
pub fn unfreeze_modules_to_save(model: &mut dyn LoraModel, modules: &[String]) -> Result<Vec<(String, Var)>> {
    let names = find_modules_to_save(model, modules)?;
    let mut vars = Vec::new();
    for (name, p) in model.params_mut() {
        if names.contains(&name) {
            p.unfreeze()?;
            vars.push((name, p.var().expect("just unfrozen").clone()));
        }
    }
    for (name, slot) in model.linears_mut() {
        let LinearSlot::Linear(l) = slot else { continue };
        for (p_name, p) in [("weight", Some(&mut l.weight)), ("bias", l.bias.as_mut())] {
            let full = format!("{name}.{p_name}");
            if let Some(p) = p.filter(|_| names.contains(&full)) {
                p.unfreeze()?;
                vars.push((full, p.var().expect("just unfrozen").clone()));
            }
        }
    }
    Ok(vars)
}

/// The current value of every parameter `names` lists (model weights and plain linears').
fn values_of(model: &dyn LoraModel, names: &[String]) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> =
        model.params().into_iter().filter(|(n, _)| names.contains(n)).map(|(n, p)| (n, p.tensor().clone())).collect();
    for (name, slot) in model.linears() {
        if let LinearSlot::Linear(l) = slot {
            for (p_name, p) in l.named_params() {
                let full = format!("{name}.{p_name}");
                if names.contains(&full) {
                    out.push((full, p.tensor().clone()));
                }
            }
        }
    }
    out
}

// ANCHOR: groups
/// The optimizer's groups for a mixed run: every adapter's A at the learning rate (scale 1),
/// every B at `loraplus_ratio` times it (LoRA+; 1 is plain LoRA), and the modules trained in
/// full (`full`) at `full_scale` times it. Empty groups are left out.
pub fn mixed_groups(
    model: &dyn LoraModel,
    full: Vec<(String, Var)>,
    loraplus_ratio: f64,
    full_scale: f64,
) -> Vec<ParamGroup> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (name, slot) in model.linears() {
        if let Some(l) = slot.adapter() {
            if let (Some(va), Some(vb)) = (l.a().var(), l.b().var()) {
                a.push((format!("{name}.lora_A.weight"), va.clone()));
                b.push((format!("{name}.lora_B.weight"), vb.clone()));
            }
        }
    }
    [("lora_A", a, 1.0), ("lora_B", b, loraplus_ratio), ("modules_to_save", full, full_scale)]
        .into_iter()
        .filter(|(_, vars, _)| !vars.is_empty())
        .map(|(name, vars, lr_scale)| ParamGroup { name: name.into(), vars, lr_scale })
        .collect()
}
// ANCHOR_END: groups

// ANCHOR: save
/// Save the adapters and the `modules` trained in full in PEFT's format: the adapter as t04
/// writes it, plus each selected parameter under `base_model.model.<name>` (with its checksum)
/// and the list in `adapter_config.json`'s `modules_to_save`. Files are written atomically.
pub fn save_mixed(model: &dyn LoraModel, config: &LoraConfig, modules: &[String], dir: &Path) -> Result<()> {
    let names = find_modules_to_save(model, modules)?;
    save_lora_weights(model, config, dir)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = read_file(&weights_path)?;
    let bad = |e: safetensors::SafeTensorError| LoraError::file(&weights_path, e.to_string());
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let file = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for key in file.names() {
        tensors.insert(key.to_string(), file.tensor(key).map_err(bad)?.load(&Device::Cpu)?);
    }
    for (name, t) in values_of(model, &names) {
        let key = format!("{PEFT_KEY_PREFIX}{name}");
        let t = t.contiguous()?;
        metadata.insert(format!("{CRC_PREFIX}{key}"), crc32_hex(&t.data()));
        tensors.insert(key, t);
    }
    let out = safetensors::serialize(&tensors, Some(metadata)).map_err(bad)?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let mut json: serde_json::Value = serde_json::from_slice(&read_file(&config_path)?)
        .map_err(|e| LoraError::file(&config_path, format!("is not JSON: {e}")))?;
    json["modules_to_save"] = serde_json::json!(modules);
    write_atomic(&weights_path, &out)?;
    write_atomic(&config_path, serde_json::to_string_pretty(&json).expect("a JSON value").as_bytes())
}
// ANCHOR_END: save

// ANCHOR: load
/// Load what [`save_mixed`] (or PEFT) saved: the adapters through t04's `load_lora_weights`,
/// and each parameter of `modules_to_save` from its `base_model.model.<name>` key into the
/// model (frozen, as loading leaves everything). Every module tensor is checked (present, right
/// shape, checksum) before anything changes. Returns the LoRA config and the module list.
pub fn load_mixed(model: &mut dyn LoraModel, dir: &Path) -> Result<(LoraConfig, Vec<String>)> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let config: AdapterConfig = serde_json::from_slice(&read_file(&config_path)?)
        .map_err(|e| LoraError::file(&config_path, format!("is not a valid PEFT adapter config: {e}")))?;
    let modules = config.modules_to_save.clone().unwrap_or_default();
    let names = find_modules_to_save(model, &modules)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let bytes = read_file(&weights_path)?;
    let bad = |e: safetensors::SafeTensorError| {
        LoraError::file(&weights_path, format!("is not a valid safetensors file: {e}"))
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let file = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let checksums = header.metadata().clone().unwrap_or_default();

    // The modules' tensors, each checked against the model's parameter.
    let current: HashMap<String, Tensor> = values_of(model, &names).into_iter().collect();
    let mut module_tensors = Vec::new();
    for name in &names {
        let key = format!("{PEFT_KEY_PREFIX}{name}");
        let expected = current[name].dims().to_vec();
        let view = file
            .tensor(&key)
            .map_err(|_| LoraError::file(&weights_path, format!("has no `{key}` {expected:?} for modules_to_save")))?;
        if view.shape() != expected.as_slice() {
            return Err(LoraError::file(
                &weights_path,
                format!("`{key}` is {:?}, the model's is {expected:?}", view.shape()),
            ));
        }
        if checksums.get(&format!("{CRC_PREFIX}{key}")).is_some_and(|crc| *crc != crc32_hex(view.data())) {
            return Err(LoraError::file(&weights_path, format!("`{key}` does not match its checksum")));
        }
        let dtype = current[name].dtype();
        module_tensors
            .push((name.clone(), view.load(&Device::Cpu)?.to_dtype(dtype)?.to_device(current[name].device())?));
    }

    // The adapter half, alone in a folder of its own, through t04's checks.
    let part = std::env::temp_dir().join(format!("lora-from-scratch-adapter-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&part).map_err(|e| LoraError::io(&part, e))?;
    let result = (|| {
        let mut adapter: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        for key in file.names().into_iter().filter(|k| !names.iter().any(|n| *k == format!("{PEFT_KEY_PREFIX}{n}"))) {
            adapter.insert(key.to_string(), file.tensor(key).map_err(bad)?.load(&Device::Cpu)?);
            if let Some(crc) = checksums.get(&format!("{CRC_PREFIX}{key}")) {
                meta.insert(format!("{CRC_PREFIX}{key}"), crc.clone());
            }
        }
        let out = safetensors::serialize(&adapter, Some(meta)).map_err(bad)?;
        write_atomic(&part.join(ADAPTER_WEIGHTS_FILE), &out)?;
        let mut lora_only = config.clone();
        lora_only.modules_to_save = None;
        write_atomic(&part.join(ADAPTER_CONFIG_FILE), serde_json::to_string(&lora_only).expect("a config").as_bytes())?;
        load_lora_weights(model, &part)
    })();
    let _ = std::fs::remove_dir_all(&part);
    let lora = result?;

    // Everything checked and the adapters in: now the modules' values.
    for (name, p) in model.params_mut() {
        if let Some((_, t)) = module_tensors.iter().find(|(n, _)| *n == name) {
            *p = Param::frozen(t);
        }
    }
    for (name, slot) in model.linears_mut() {
        let LinearSlot::Linear(l) = slot else { continue };
        for (p_name, p) in [("weight", Some(&mut l.weight)), ("bias", l.bias.as_mut())] {
            let full = format!("{name}.{p_name}");
            if let (Some(p), Some((_, t))) = (p, module_tensors.iter().find(|(n, _)| *n == full)) {
                *p = Param::frozen(t);
            }
        }
    }
    Ok((lora, modules))
}
// ANCHOR_END: load

/// Train LoRA (already injected, `lora`) and the `modules` in full together with `train_lora`'s
/// loop: B at `loraplus_ratio` times the learning rate, the modules at `full_scale` times it.
/// The best state by validation loss is saved with [`save_mixed`] in `cfg.out_dir/best`.
#[allow(clippy::too_many_arguments)]
pub fn train_mixed(
    model: &mut dyn crate::models::CausalLm,
    lora: &LoraConfig,
    modules: &[String],
    loraplus_ratio: f64,
    full_scale: f64,
    train: &[crate::Example],
    val: &[crate::Example],
    pad_id: u32,
    cfg: &crate::TrainConfig,
) -> Result<crate::history::TrainHistory> {
    let full = unfreeze_modules_to_save(model, modules)?;
    let groups = mixed_groups(model, full, loraplus_ratio, full_scale);
    let best = crate::checkpoint::best_adapter_dir(&cfg.out_dir);
    crate::train_groups::train_groups(model, groups, train, val, pad_id, cfg, &mut |m| {
        save_mixed(m, lora, modules, &best)
    })
}

/// A number no other call in this process has had: for unique temporary folder names.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
