//! Challenge 2 (t10): several named adapters on one base model.
//!
//! An adapter is a few MB and the base hundreds, so one base in memory can serve many tasks.
//! [`AdapterSet`] keeps named adapters beside a model and puts one of them (or none) into the
//! model's slots on request, as PEFT's `load_adapter` / `set_adapter` / `delete_adapter` do:
//! switching moves shared tensors, it reads and copies nothing. [`combine`] is PEFT's
//! `add_weighted_adapter` with its "linear" and "cat" rules, and [`per_row_lora`] the low-rank
//! part of a batch whose rows each use their own adapter (Punica's gather per row; the layer is
//! `crate::serving::per_row::PerRowLinear`).
//! Read book/src/t10_multi_lora.md beside this file. Grade it with `cargo test --features exercises --test t10_multi_lora`.
#![allow(unused_variables, unused_imports, unused_mut, dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{LoraError, Result};
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::tasks::t01_lora_layer::LoraLayer;
use crate::tasks::t04_save_load::load_lora_weights;

/// How [`combine`] joins adapters (PEFT's `combination_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    /// A = Σ √(w s) A_i and B = Σ √(w s) B_i, same rank: cheap, but B A then also holds the
    /// cross terms B_i A_j, so it is not the weighted sum of the updates.
    Linear,
    /// A stacks the w s A_i, B stacks the B_i, rank Σ r_i: B A is exactly Σ w_i s_i B_i A_i.
    Cat,
}

/// One named adapter: its config and its layers by module name.
#[derive(Clone, Debug)]
pub struct NamedAdapter {
    pub config: LoraConfig,
    pub layers: BTreeMap<String, LoraLayer>,
}

/// Named adapters kept beside one base model, at most one of them in the model at a time.
#[derive(Clone, Debug, Default)]
pub struct AdapterSet {
    adapters: BTreeMap<String, NamedAdapter>,
    active: Option<String>,
}

/// The low-rank part of a layer whose batch rows use different adapters: for row i with
/// adapter k = rows\[i\], `scale[k] (x_i A_k^T) B_k^T`. `x` [batch, seq, in], `a` [K, r, in],
/// `b` [K, out, r], `scale` \[K\], `rows` \[batch\] (u32). Each row gathers its own A and B, so
/// one batched matmul serves every adapter at once.
pub fn per_row_lora(x: &Tensor, a: &Tensor, b: &Tensor, scale: &Tensor, rows: &Tensor) -> Result<Tensor> {
    // TODO: [batch, seq, out]: row i is scale[k] (x_i A_k^T) B_k^T with k = rows[i], computed for
    // all rows at once (no loop over the rows).
    // Book: "A batch of many adapters".
    todo!("t10: per_row_lora")
}

/// One module's combined adapter from `parts` (adapter, weight), as PEFT's
/// `add_weighted_adapter`: rank and alpha of the result are equal (scaling 1), the scalings of
/// the parts are folded into A and B.
pub fn combine(parts: &[(&LoraLayer, f64)], how: Combination) -> Result<(Tensor, Tensor)> {
    // TODO: no parts is an error. Linear: equal ranks (else an error), A = sum of sqrt(w s) A_i and
    // B = sum of sqrt(w s) B_i. Cat: A = the w s A_i stacked along the rank (rows), B = the B_i
    // stacked along the rank (columns). Here w is a part's weight and s its scaling.
    // Book: "Combining adapters".
    todo!("t10: combine")
}

impl AdapterSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The adapters' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.adapters.keys().map(String::as_str).collect()
    }

    /// The adapter in the model now, if any.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// An adapter by name.
    pub fn get(&self, name: &str) -> Option<&NamedAdapter> {
        self.adapters.get(name)
    }

    /// Take the adapters out of `model` (after training them there) and keep them as `name`.
    /// The model is left with none.
    pub fn take_from(&mut self, model: &mut dyn LoraModel, name: &str, config: LoraConfig) -> Result<()> {
        if self.adapters.contains_key(name) {
            return Err(LoraError::config("adapter name", format!("`{name}` is taken")));
        }
        let layers: BTreeMap<String, LoraLayer> =
            model.linears().into_iter().filter_map(|(n, s)| s.adapter().map(|l| (n, l.clone()))).collect();
        if layers.is_empty() {
            return Err(LoraError::config("model", "has no adapters to take"));
        }
        self.clear(model)?;
        self.adapters.insert(name.to_string(), NamedAdapter { config, layers });
        Ok(())
    }

    /// Read a PEFT adapter folder (t04 checks it against the model) and keep it as `name`. The
    /// active adapter, if any, stays active.
    pub fn load(&mut self, model: &mut dyn LoraModel, name: &str, dir: &Path) -> Result<()> {
        let active = self.active.clone();
        self.clear(model)?;
        let config = load_lora_weights(model, dir)?;
        self.take_from(model, name, config)?;
        self.set_active(model, active.as_deref())
    }

    /// Put adapter `name` into the model's slots, or none with `None`. Nothing is read or
    /// copied: the slots share the adapter's tensors.
    pub fn set_active(&mut self, model: &mut dyn LoraModel, name: Option<&str>) -> Result<()> {
        // TODO: afterwards the modules of adapter `name` carry its layers (sharing their tensors,
        // nothing copied or read) and every other slot is plain; with `None` every slot is plain.
        // An unknown name, or an adapter module the model lacks, is an error that changes nothing:
        // every new slot is ready before any is installed. The active name is remembered.
        // Book: "Switching adapters".
        todo!("t10: AdapterSet::set_active")
    }

    /// No adapter in the model.
    pub fn clear(&mut self, model: &mut dyn LoraModel) -> Result<()> {
        for (_, slot) in model.linears_mut() {
            *slot = slot.without_adapter()?;
        }
        self.active = None;
        Ok(())
    }

    /// Forget adapter `name`; if it is active, the model is left with none.
    pub fn delete(&mut self, model: &mut dyn LoraModel, name: &str) -> Result<()> {
        // TODO: forget adapter `name` (unknown: an error); if it was active, the model is left with
        // no adapter.
        // Book: "Loading and deleting".
        todo!("t10: AdapterSet::delete")
    }

    /// A new adapter `new_name` from `parts` (name, weight) by `how`, module by module; a
    /// module that only some parts adapt takes those parts.
    pub fn add_weighted(&mut self, new_name: &str, parts: &[(&str, f64)], how: Combination) -> Result<()> {
        // TODO: an error if `new_name` is taken or a part is not loaded. For every module any part
        // adapts, the `combine` of the parts that adapt it, kept as a layer whose config has r =
        // alpha = the combined rank (scaling 1); the new adapter's config targets those modules.
        // Book: "Combining adapters".
        todo!("t10: AdapterSet::add_weighted")
    }
}
