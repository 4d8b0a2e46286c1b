//! Challenge 3 (t11): LoRA beside modules trained in full, each group at its own learning rate.
//!
//! Some weights are worth training whole next to the adapters: the norms, or a head for a new
//! task. PEFT calls them `modules_to_save`: they are selected by module name (a suffix match,
//! so `"norm"` selects every RMSNorm), trained in full, and saved in the adapter file under
//! their own names (`base_model.model.model.norm.weight`). Each kind of weight gets its own
//! learning rate through AdamW's parameter groups; LoRA+ (Hayou et al. 2024, arXiv 2402.12354)
//! is one such choice: B learns `ratio` times faster than A.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::error::{LoraError, Result};
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::lora::param::Param;
use crate::lora::slot::LinearSlot;
use crate::models::CausalLm;
use crate::peft::file::{write_adapter, AdapterFile};
use crate::peft::format::PEFT_KEY_PREFIX;
use crate::tasks::t04_save_load::{adapter_config, load_lora_tensors, lora_tensors};
use crate::tasks::t05_data::Example;
use crate::tasks::t06_train::{train, TrainConfig};
use crate::train::history::TrainHistory;
/// t04's checksum keys in the safetensors metadata (PEFT ignores them).
use crate::train::optim::ParamGroup;
use crate::train::trainee::Trainee;

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
/// Save the adapters and the `modules` trained in full in PEFT's format: the adapter's tensors
/// as t04 keys them, plus each selected parameter under `base_model.model.<name>`, and the list
/// in `adapter_config.json`'s `modules_to_save`. One write, each file atomic.
pub fn save_mixed(model: &dyn LoraModel, config: &LoraConfig, modules: &[String], dir: &Path) -> Result<()> {
    let names = find_modules_to_save(model, modules)?;
    let mut tensors = lora_tensors(model, config)?;
    for (name, t) in values_of(model, &names) {
        tensors.insert(format!("{PEFT_KEY_PREFIX}{name}"), t);
    }
    let mut adapter = adapter_config(model, config);
    adapter.modules_to_save = Some(modules.to_vec());
    write_adapter(dir, &adapter, &tensors)
}
// ANCHOR_END: save

// ANCHOR: load
/// Load what [`save_mixed`] (or PEFT) saved: the adapters through t04's `load_lora_tensors`,
/// and each parameter of `modules_to_save` from its `base_model.model.<name>` key into the
/// model (frozen, as loading leaves everything). Every tensor is checked (present, right shape,
/// checksum, finite) before anything changes. Returns the LoRA config and the module list.
pub fn load_mixed(model: &mut dyn LoraModel, dir: &Path) -> Result<(LoraConfig, Vec<String>)> {
    let file = AdapterFile::read(dir)?;
    let lora = file.lora_config()?;
    let modules = file.config.modules_to_save.clone().unwrap_or_default();
    let names = find_modules_to_save(model, &modules)?;

    // The modules' tensors, each checked against the model's parameter.
    let current: HashMap<String, Tensor> = values_of(model, &names).into_iter().collect();
    let mut module_tensors = Vec::new();
    let mut module_keys = Vec::new();
    for name in &names {
        let key = format!("{PEFT_KEY_PREFIX}{name}");
        let want = &current[name];
        let t = file.tensor(&key, want.dims(), want.dtype(), want.device()).map_err(|problem| {
            LoraError::AdapterMismatch { path: file.path().to_path_buf(), problems: vec![problem] }
        })?;
        module_tensors.push((name.clone(), t));
        module_keys.push(key);
    }
    // The adapter half, with t04's checks; the modules' keys are not unexpected there.
    load_lora_tensors(model, &lora, &file, &module_keys)?;

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

/// LoRA (already injected) with `modules` trained in full, as a [`Trainee`] of task 2.2's loop:
/// B at `loraplus_ratio` times the learning rate, the modules at `full_scale` times it, saved
/// with [`save_mixed`].
pub struct MixedTrainee<'a> {
    pub lora: &'a LoraConfig,
    pub modules: &'a [String],
    pub loraplus_ratio: f64,
    pub full_scale: f64,
}

impl Trainee for MixedTrainee<'_> {
    fn groups(&self, model: &mut dyn CausalLm) -> Result<Vec<ParamGroup>> {
        let full = unfreeze_modules_to_save(model, self.modules)?;
        Ok(mixed_groups(model, full, self.loraplus_ratio, self.full_scale))
    }

    fn save(&self, model: &dyn CausalLm, dir: &Path) -> Result<()> {
        save_mixed(model, self.lora, self.modules, dir)
    }

    fn load(&self, model: &mut dyn CausalLm, dir: &Path) -> Result<()> {
        load_mixed(model, dir).map(|_| ())
    }
}

/// Train LoRA (already injected, `lora`) and the `modules` in full together with task 2.2's
/// loop ([`MixedTrainee`]). The best state by validation loss is saved with [`save_mixed`] in
/// `cfg.out_dir/best`.
#[allow(clippy::too_many_arguments)]
pub fn train_mixed(
    model: &mut dyn CausalLm,
    lora: &LoraConfig,
    modules: &[String],
    loraplus_ratio: f64,
    full_scale: f64,
    train_set: &[Example],
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
) -> Result<TrainHistory> {
    let trainee = MixedTrainee { lora, modules, loraplus_ratio, full_scale };
    train(model, &trainee, train_set, val, pad_id, cfg, &mut |_, _| {})
}
