//! Task 1.3: `inject_lora` and the helpers that inspect an adapted model.
//!
//! The model lists its linear layers by Hugging Face name (`LoraModel::linears_mut`); you match
//! the names against `target_modules` and put a `LinearWithLora` into each matching slot.
//! Read book/src/t03_inject.md beside this file. Grade it with
//! `cargo test --features exercises --test t03_inject`.
#![allow(unused_variables, unused_imports)]

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

/// Whether module `name` is selected by `target`: the full name, or a suffix that starts after a
/// dot (`"q_proj"` and `"self_attn.q_proj"` select `model.layers.0.self_attn.q_proj`, but
/// `"proj"` selects nothing: matching is by whole name parts).
pub fn target_matches(name: &str, target: &str) -> bool {
    // TODO: true when `name` is `target`, or ends with `target` starting right after a dot (PEFT's
    // rule).
    // Book: "Matching names as PEFT does".
    todo!("t03: target_matches")
}

/// The names of the linear layers `target_modules` selects, in model order. `"all-linear"`
/// selects every linear layer but the output head. A target that selects nothing is an error
/// that lists the names that exist, because a typo would otherwise train nothing at all.
pub fn find_target_modules(model: &dyn LoraModel, target_modules: &[String]) -> Result<Vec<String>> {
    // TODO: the names of `model.linears()` that some target selects (ALL_LINEAR: every linear but
    // `model.output_head()`), in model order, each once. A target that selects nothing is
    // `LoraError::UnknownTarget { target, available }`, `available` holding every linear's name.
    // Book: "A typo is an error".
    todo!("t03: find_target_modules")
}

/// Give every linear layer that `config.target_modules` selects a fresh adapter, freeze all
/// other weights, and report what was done. Nothing changes if any selected layer already has
/// an adapter or a target selects nothing.
pub fn inject_lora(model: &mut dyn LoraModel, config: &LoraConfig) -> Result<InjectionSummary> {
    // TODO: every selected linear gets a fresh adapter (f32, on its slot's device) beside its base,
    // and the base is then frozen (`freeze_base_model`). The A matrices come from one generator
    // seeded with `config.seed` for the whole model, drawn in model order, so the same config gives
    // the same adapters. Checks first, changes after: an invalid config, an unknown target, or a
    // selected slot that already has an adapter (`LoraError::module(name, ...)`) is an error that
    // changes nothing. Returns the adapted modules in model order and the parameter counts.
    // Book: "Injection without setattr".
    todo!("t03: inject_lora")
}

/// The trainable adapter matrices, named `<module>.lora_A.weight` / `.lora_B.weight`: exactly
/// what the optimizer of a LoRA run should receive.
pub fn get_lora_parameters(model: &dyn LoraModel) -> Vec<(String, Var)> {
    // TODO: the `Var`s of every adapter's A and B, named `<module>.lora_A.weight` /
    // `<module>.lora_B.weight`, in model order; a frozen matrix has no `Var` and is not listed.
    // Book: "What freezing means in candle".
    todo!("t03: get_lora_parameters")
}

/// Freeze every weight that is not part of an adapter.
pub fn freeze_base_model(model: &mut dyn LoraModel) {
    // TODO: afterwards no weight outside the adapters is trainable: neither the plain linear
    // layers' weights and biases nor the model's other weights (`model.params_mut()`). Adapters are
    // left as they are.
    // Book: "What freezing means in candle".
    todo!("t03: freeze_base_model")
}

/// Make every adapter's A and B trainable.
pub fn unfreeze_lora_parameters(model: &mut dyn LoraModel) -> Result<()> {
    // TODO: afterwards both matrices of every adapter are trainable.
    // Book: "What freezing means in candle".
    todo!("t03: unfreeze_lora_parameters")
}

/// Trainable and total parameter counts, adapters included.
pub fn count_parameters(model: &dyn LoraModel) -> ParameterCount {
    // TODO: `total` counts every scalar of every weight: each slot's parameters (base weight and
    // bias, adapter A and B) and `model.params()`; `trainable` counts those of the trainable ones.
    // Book: "What freezing means in candle".
    todo!("t03: count_parameters")
}

/// Print the counts the way PEFT's `print_trainable_parameters()` does, and return them.
pub fn print_trainable_parameters(model: &dyn LoraModel) -> ParameterCount {
    // TODO: print PEFT's line (`ParameterCount`'s Display is that line) and return the counts.
    // Book: "Checking an injection".
    todo!("t03: print_trainable_parameters")
}

/// Which linears carry adapters, which are frozen, and which base layers are (wrongly)
/// trainable.
pub fn check_lora_injection(model: &dyn LoraModel) -> InjectionReport {
    // TODO: sort every linear slot into `adapted` (with its in, out, r and scaling), `frozen` (a
    // plain linear with nothing trainable) or `trainable_base` (a plain linear with a trainable
    // weight or bias); list adapters whose A or B is frozen in `frozen_adapters`; `params` are the
    // counts.
    // Book: "Checking an injection".
    todo!("t03: check_lora_injection")
}

/// The gradient norm of every trainable parameter after `loss.backward()`; a parameter with no
/// gradient is cut off from the loss (a frozen layer in between, or an op without a backward).
pub fn check_gradients(model: &dyn LoraModel, grads: &GradStore) -> Result<GradientReport> {
    // TODO: one `GradientEntry` per trainable parameter, in the order and with the names
    // `count_parameters` walks (`<module>.weight`, `<module>.bias`, `<module>.lora_A.weight`,
    // `<module>.lora_B.weight`, then `model.params()`); `norm` is the L2 norm of that parameter's
    // gradient in `grads`, or None when `grads` has none.
    // Book: "Checking gradients".
    todo!("t03: check_gradients")
}
