//! Task 1.3: `inject_lora` and the helpers that inspect an adapted model.
//!
//! PEFT's `get_peft_model` walks `named_modules()`, matches each name against `target_modules`
//! (`peft/tuners/tuners_utils.py`, `check_target_module_exists`: a full name or a dotted suffix)
//! and swaps matching `nn.Linear`s for LoRA layers, then freezes everything else. Here the model
//! lists its [`LinearSlot`]s by Hugging Face name and we swap the slot's content.

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{LoraError, Result};
use crate::lora::config::LoraConfig;
use crate::lora::config::ALL_LINEAR;
use crate::lora::model::LoraModel;
use crate::lora::param::Param;
use crate::lora::report::{
    AdaptedModule, GradientEntry, GradientReport, InjectionReport, InjectionSummary, ParameterCount,
};
use crate::lora::slot::LinearSlot;
use crate::tasks::t01_lora_layer::LoraLayer;

// ANCHOR: matches
/// Whether module `name` is selected by `target`: the full name, or a suffix that starts after a
/// dot (`"q_proj"` and `"self_attn.q_proj"` select `model.layers.0.self_attn.q_proj`, but
/// `"proj"` selects nothing: matching is by whole name parts).
pub fn target_matches(name: &str, target: &str) -> bool {
    name == target || name.ends_with(&format!(".{target}"))
}
// ANCHOR_END: matches

/// The names of the linear layers `target_modules` selects, in model order. `"all-linear"`
/// selects every linear layer but the output head. A target that selects nothing is an error
/// that lists the names that exist, because a typo would otherwise train nothing at all.
pub fn find_target_modules(model: &dyn LoraModel, target_modules: &[String]) -> Result<Vec<String>> {
    let names: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
    let head = model.output_head().map(str::to_string);
    let mut selected = HashSet::new();
    for target in target_modules {
        let hits: Vec<&String> = if target == ALL_LINEAR {
            names.iter().filter(|n| Some(n.as_str()) != head.as_deref()).collect()
        } else {
            names.iter().filter(|n| target_matches(n, target)).collect()
        };
        if hits.is_empty() {
            return Err(LoraError::UnknownTarget { target: target.clone(), available: names.clone() });
        }
        selected.extend(hits.into_iter().cloned());
    }
    Ok(names.into_iter().filter(|n| selected.contains(n)).collect())
}

// ANCHOR: inject
/// Give every linear layer that `config.target_modules` selects a fresh adapter, freeze all
/// other weights, and report what was done. Nothing changes if any selected layer already has
/// an adapter or a target selects nothing.
pub fn inject_lora(model: &mut dyn LoraModel, config: &LoraConfig) -> Result<InjectionSummary> {
    config.validate()?;
    let targets: HashSet<String> = find_target_modules(model, &config.target_modules)?.into_iter().collect();
    if let Some((name, _)) = model.linears().into_iter().find(|(n, s)| targets.contains(n) && s.adapter().is_some()) {
        return Err(LoraError::module(name, "already has a LoRA adapter"));
    }
    // One generator for the whole model, seeded from the config: the same config gives the
    // same A matrices, so runs can be repeated.
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut adapted = Vec::new();
    for (name, slot) in model.linears_mut() {
        if !targets.contains(&name) {
            continue;
        }
        let (in_features, out_features) = slot.in_out_features();
        // Adapters are kept in f32 whatever the base's dtype: they are small, and f32 keeps
        // their small updates from being rounded away.
        let lora = LoraLayer::new(in_features, out_features, config, &mut rng, DType::F32, slot.device())?;
        let scaling = lora.scaling();
        // A plain layer becomes a `LinearWithLora`; every slot knows how to take an adapter.
        slot.set_adapter(lora)?;
        adapted.push(AdaptedModule { name, in_features, out_features, r: config.r, scaling });
    }
    freeze_base_model(model);
    Ok(InjectionSummary { adapted, params: count_parameters(model) })
}
// ANCHOR_END: inject

/// Every parameter of the model with its name: `<module>.weight` / `.bias` for base linears,
/// `<module>.lora_A.weight` / `.lora_B.weight` for adapters, and the model's other weights.
fn named_params(model: &dyn LoraModel) -> Vec<(String, Param)> {
    let mut out = Vec::new();
    for (name, slot) in model.linears() {
        for (p_name, p) in slot.named_params() {
            out.push((format!("{name}.{p_name}"), p));
        }
    }
    out.extend(model.params().into_iter().map(|(n, p)| (n, p.clone())));
    out
}

// ANCHOR: helpers
/// The trainable adapter matrices, named `<module>.lora_A.weight` / `.lora_B.weight`: exactly
/// what the optimizer of a LoRA run should receive.
pub fn get_lora_parameters(model: &dyn LoraModel) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    for (name, slot) in model.linears() {
        if let Some(l) = slot.adapter() {
            for (m, p) in [("lora_A", l.a()), ("lora_B", l.b())] {
                if let Some(v) = p.var() {
                    out.push((format!("{name}.{m}.weight"), v.clone()));
                }
            }
        }
    }
    out
}

/// Freeze every weight that is not part of an adapter.
pub fn freeze_base_model(model: &mut dyn LoraModel) {
    for (_, slot) in model.linears_mut() {
        if let LinearSlot::Linear(l) = slot {
            l.freeze();
        }
    }
    for (_, p) in model.params_mut() {
        p.freeze();
    }
}

/// Make every adapter's A and B trainable.
pub fn unfreeze_lora_parameters(model: &mut dyn LoraModel) -> Result<()> {
    for (_, slot) in model.linears_mut() {
        if let Some(l) = slot.adapter_mut() {
            for p in l.params_mut() {
                p.unfreeze()?;
            }
        }
    }
    Ok(())
}

/// Trainable and total parameter counts, adapters included.
pub fn count_parameters(model: &dyn LoraModel) -> ParameterCount {
    let params = named_params(model);
    ParameterCount {
        trainable: params.iter().filter(|(_, p)| p.is_trainable()).map(|(_, p)| p.elem_count()).sum(),
        total: params.iter().map(|(_, p)| p.elem_count()).sum(),
    }
}

/// Print the counts the way PEFT's `print_trainable_parameters()` does, and return them.
pub fn print_trainable_parameters(model: &dyn LoraModel) -> ParameterCount {
    let count = count_parameters(model);
    println!("{count}");
    count
}
// ANCHOR_END: helpers

/// Which linears carry adapters, which are frozen, and which base layers are (wrongly)
/// trainable.
pub fn check_lora_injection(model: &dyn LoraModel) -> InjectionReport {
    let mut report = InjectionReport {
        adapted: Vec::new(),
        frozen: Vec::new(),
        trainable_base: Vec::new(),
        frozen_adapters: Vec::new(),
        params: count_parameters(model),
    };
    for (name, slot) in model.linears() {
        let trainable_base =
            matches!(slot, LinearSlot::Linear(l) if l.named_params().iter().any(|(_, p)| p.is_trainable()));
        match slot.adapter() {
            _ if trainable_base => report.trainable_base.push(name),
            None => report.frozen.push(name),
            Some(lora) => {
                if !(lora.a().is_trainable() && lora.b().is_trainable()) {
                    report.frozen_adapters.push(name.clone());
                }
                report.adapted.push(AdaptedModule {
                    name,
                    in_features: lora.in_features(),
                    out_features: lora.out_features(),
                    r: lora.rank(),
                    scaling: lora.scaling(),
                });
            }
        }
    }
    report
}

// ANCHOR: check_gradients
/// The gradient norm of every trainable parameter after `loss.backward()`; a parameter with no
/// gradient is cut off from the loss (a frozen layer in between, or an op without a backward).
pub fn check_gradients(model: &dyn LoraModel, grads: &GradStore) -> Result<GradientReport> {
    let mut entries = Vec::new();
    for (name, p) in named_params(model) {
        if let Some(v) = p.var() {
            let norm = match grads.get(v.as_tensor()) {
                Some(g) => Some(g.to_dtype(DType::F64)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?),
                None => None,
            };
            entries.push(GradientEntry { name, norm });
        }
    }
    Ok(GradientReport { entries })
}
// ANCHOR_END: check_gradients
