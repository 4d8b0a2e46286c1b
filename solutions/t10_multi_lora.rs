//! Challenge 2 (t10): several named adapters on one base model.
//!
//! An adapter is a few MB and the base hundreds, so one base in memory can serve many tasks.
//! [`AdapterSet`] keeps named adapters beside a model and puts one of them (or none) into the
//! model's slots on request, as PEFT's `load_adapter` / `set_adapter` / `delete_adapter` do:
//! switching moves shared tensors, it reads and copies nothing. [`combine`] is PEFT's
//! `add_weighted_adapter` with its "linear" and "cat" rules, and [`per_row_lora`] the low-rank
//! part of a batch whose rows each use their own adapter (Punica's gather per row; the layer is
//! `crate::serving::per_row::PerRowLinear`).

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

// ANCHOR: per_row
/// The low-rank part of a layer whose batch rows use different adapters: for row i with
/// adapter k = rows\[i\], `scale[k] (x_i A_k^T) B_k^T`. `x` [batch, seq, in], `a` [K, r, in],
/// `b` [K, out, r], `scale` \[K\], `rows` \[batch\] (u32). Each row gathers its own A and B, so
/// one batched matmul serves every adapter at once.
pub fn per_row_lora(x: &Tensor, a: &Tensor, b: &Tensor, scale: &Tensor, rows: &Tensor) -> Result<Tensor> {
    let a_rows = a.index_select(rows, 0)?; // [batch, r, in]
    let b_rows = b.index_select(rows, 0)?; // [batch, out, r]
    let s_rows = scale.index_select(rows, 0)?.reshape(((), 1, 1))?; // [batch, 1, 1]
    let z = x.matmul(&a_rows.transpose(1, 2)?)?; // [batch, seq, r]
    Ok(z.matmul(&b_rows.transpose(1, 2)?)?.broadcast_mul(&s_rows)?)
}
// ANCHOR_END: per_row

// ANCHOR: combine
/// One module's combined adapter from `parts` (adapter, weight), as PEFT's
/// `add_weighted_adapter`: rank and alpha of the result are equal (scaling 1), the scalings of
/// the parts are folded into A and B.
pub fn combine(parts: &[(&LoraLayer, f64)], how: Combination) -> Result<(Tensor, Tensor)> {
    let Some((first, _)) = parts.first() else {
        return Err(LoraError::config("combine", "no adapters to combine"));
    };
    match how {
        Combination::Linear => {
            if let Some((l, _)) = parts.iter().find(|(l, _)| l.rank() != first.rank()) {
                let why = format!("needs equal ranks, got {} and {}", first.rank(), l.rank());
                return Err(LoraError::config("linear combination", why));
            }
            let (mut a, mut b) = (first.a().tensor().zeros_like()?, first.b().tensor().zeros_like()?);
            for (l, w) in parts {
                let c = (w * l.scaling()).sqrt();
                a = (a + (l.a().tensor() * c)?)?;
                b = (b + (l.b().tensor() * c)?)?;
            }
            Ok((a, b))
        }
        Combination::Cat => {
            let a: Vec<Tensor> =
                parts.iter().map(|(l, w)| l.a().tensor() * (w * l.scaling())).collect::<candle_core::Result<_>>()?;
            let b: Vec<&Tensor> = parts.iter().map(|(l, _)| l.b().tensor()).collect();
            Ok((Tensor::cat(&a, 0)?, Tensor::cat(&b, 1)?))
        }
    }
}
// ANCHOR_END: combine

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

    // ANCHOR: set_active
    /// Put adapter `name` into the model's slots, or none with `None`. Nothing is read or
    /// copied: the slots share the adapter's tensors.
    pub fn set_active(&mut self, model: &mut dyn LoraModel, name: Option<&str>) -> Result<()> {
        let adapter = match name {
            Some(n) => {
                Some(self.adapters.get(n).ok_or_else(|| LoraError::config("adapter", format!("`{n}` is not loaded")))?)
            }
            None => None,
        };
        // Build every new slot first, so that an adapter that does not fit changes nothing.
        let mut new_slots = Vec::new();
        let mut placed = 0;
        for (module, slot) in model.linears() {
            let new = match adapter.and_then(|a| a.layers.get(&module)) {
                Some(l) => {
                    placed += 1;
                    slot.with_adapter(l.clone())?
                }
                None => slot.without_adapter()?,
            };
            new_slots.push(new);
        }
        if let Some(a) = adapter {
            if placed != a.layers.len() {
                let missing = a.layers.keys().find(|m| !model.linears().iter().any(|(n, _)| n == *m));
                return Err(LoraError::module(
                    missing.cloned().unwrap_or_default(),
                    "is not a linear layer of this model",
                ));
            }
        }
        for ((_, slot), new) in model.linears_mut().into_iter().zip(new_slots) {
            *slot = new;
        }
        self.active = name.map(str::to_string);
        Ok(())
    }
    // ANCHOR_END: set_active

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
        if self.adapters.remove(name).is_none() {
            return Err(LoraError::config("adapter", format!("`{name}` is not loaded")));
        }
        if self.active.as_deref() == Some(name) {
            self.clear(model)?;
        }
        Ok(())
    }

    /// A new adapter `new_name` from `parts` (name, weight) by `how`, module by module; a
    /// module that only some parts adapt takes those parts.
    pub fn add_weighted(&mut self, new_name: &str, parts: &[(&str, f64)], how: Combination) -> Result<()> {
        if self.adapters.contains_key(new_name) {
            return Err(LoraError::config("adapter name", format!("`{new_name}` is taken")));
        }
        let chosen: Vec<(&NamedAdapter, f64)> = parts
            .iter()
            .map(|(n, w)| {
                Ok((
                    self.adapters
                        .get(*n)
                        .ok_or_else(|| LoraError::config("adapter", format!("`{n}` is not loaded")))?,
                    *w,
                ))
            })
            .collect::<Result<_>>()?;
        let modules: std::collections::BTreeSet<&String> = chosen.iter().flat_map(|(a, _)| a.layers.keys()).collect();
        let mut layers = BTreeMap::new();
        let mut rank = 0;
        for module in modules {
            let here: Vec<(&LoraLayer, f64)> =
                chosen.iter().filter_map(|(a, w)| a.layers.get(module).map(|l| (l, *w))).collect();
            let (a, b) = combine(&here, how)?;
            rank = a.dim(0)?;
            let config = LoraConfig::new(rank, rank as f64, &[module.as_str()]);
            layers.insert(
                module.clone(),
                LoraLayer::from_tensors(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?, &config)?,
            );
        }
        let targets: Vec<&str> = layers.keys().map(String::as_str).collect();
        let config = LoraConfig::new(rank, rank as f64, &targets);
        self.adapters.insert(new_name.to_string(), NamedAdapter { config, layers });
        Ok(())
    }
}
