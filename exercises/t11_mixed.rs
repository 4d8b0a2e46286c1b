//! Challenge 3 (t11): LoRA beside modules trained in full, each group at its own learning rate.
//!
//! Some weights are worth training whole next to the adapters: the norms, or a head for a new
//! task. PEFT calls them `modules_to_save`: they are selected by module name (a suffix match,
//! so `"norm"` selects every RMSNorm), trained in full, and saved in the adapter file under
//! their own names (`base_model.model.model.norm.weight`). Each kind of weight gets its own
//! learning rate through AdamW's parameter groups; LoRA+ (Hayou et al. 2024, arXiv 2402.12354)
//! is one such choice: B learns `ratio` times faster than A.
//! Read book/src/t11_mixed.md beside this file. Grade it with `cargo test --features exercises --test t11_mixed`.
#![allow(unused_variables, unused_imports, unused_mut, dead_code)]

use std::collections::{BTreeMap, HashMap};
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

/// The parameters `modules` selects, by name (`model.norm.weight`, `lm_head.weight`): every
/// weight outside the linear slots, and every plain linear layer's weight and bias, whose
/// module name ends with an entry (PEFT's rule). An entry that selects nothing, or selects a
/// layer that carries an adapter, is an error.
pub fn find_modules_to_save(model: &dyn LoraModel, modules: &[String]) -> Result<Vec<String>> {
    // TODO: for each entry: the parameters of `model.params()` whose module (the name without its
    // last part) ends with it, and `<name>.weight` / `<name>.bias` of every plain linear slot whose
    // name ends with it. A matching slot with an adapter is a `LoraError::module` error; an entry
    // matching nothing is a `LoraError::config` error naming it. Sorted, no repeats.
    // Book: "Choosing the modules".
    todo!("t11: find_modules_to_save")
}

/// Make the parameters `modules` selects trainable; returns their `Var`s for the optimizer.
pub fn unfreeze_modules_to_save(model: &mut dyn LoraModel, modules: &[String]) -> Result<Vec<(String, Var)>> {
    // TODO: every parameter `find_modules_to_save` selects (model weights, plain linears' weights
    // and biases) made trainable, and their `Var`s returned by name.
    // Book: "Choosing the modules".
    todo!("t11: unfreeze_modules_to_save")
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

/// The optimizer's groups for a mixed run: every adapter's A at the learning rate (scale 1),
/// every B at `loraplus_ratio` times it (LoRA+; 1 is plain LoRA), and the modules trained in
/// full (`full`) at `full_scale` times it. Empty groups are left out.
pub fn mixed_groups(
    model: &dyn LoraModel,
    full: Vec<(String, Var)>,
    loraplus_ratio: f64,
    full_scale: f64,
) -> Vec<ParamGroup> {
    // TODO: a `ParamGroup` "lora_A" (every adapter's A Var, scale 1), "lora_B" (every B, scale
    // loraplus_ratio) and "modules_to_save" (`full`, scale full_scale), empty ones left out.
    // Book: "Learning rates per group".
    todo!("t11: mixed_groups")
}

/// Save the adapters and the `modules` trained in full in PEFT's format: the adapter's tensors
/// as t04 keys them, plus each selected parameter under `base_model.model.<name>`, and the list
/// in `adapter_config.json`'s `modules_to_save`. One write, each file atomic.
pub fn save_mixed(model: &dyn LoraModel, config: &LoraConfig, modules: &[String], dir: &Path) -> Result<()> {
    // TODO: one `write_adapter` of: t04's `lora_tensors` plus the value of every selected parameter
    // under `base_model.model.<name>`, and t04's `adapter_config` with `modules_to_save` set to
    // `modules`.
    // Book: "Saving in PEFT's format".
    todo!("t11: save_mixed")
}

/// Load what [`save_mixed`] (or PEFT) saved: the adapters through t04's `load_lora_tensors`,
/// and each parameter of `modules_to_save` from its `base_model.model.<name>` key into the
/// model (frozen, as loading leaves everything). Every tensor is checked (present, right shape,
/// checksum, finite) before anything changes. Returns the LoRA config and the module list.
pub fn load_mixed(model: &mut dyn LoraModel, dir: &Path) -> Result<(LoraConfig, Vec<String>)> {
    // TODO: checks first, changes after. The folder read once: its LoRA config and its
    // `modules_to_save`. Every selected parameter's tensor checked against the model's (present,
    // same shape and dtype, checksum, finite; a problem is a `LoraError::AdapterMismatch` naming
    // it) before anything changes; the adapter half loaded by t04's `load_lora_tensors`, with the
    // modules' keys as other keys; then the modules' values set, frozen. Returns the config and the
    // module list.
    // Book: "Saving in PEFT's format".
    todo!("t11: load_mixed")
}

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
