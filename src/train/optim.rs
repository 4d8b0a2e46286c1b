//! AdamW (Loshchilov & Hutter 2019) over named `Var`s, with its state saved and restored.
//!
//! candle_nn's `AdamW` updates correctly but cannot change its learning rate per step from
//! outside in a way that survives a restart, and keeps its moments private, so an interrupted run
//! could not resume where it stopped. This one is PyTorch's `torch.optim.AdamW` step for step
//! (decoupled weight decay, bias-corrected moments), and writes its moments and step count to a
//! safetensors file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{LoraError, Result};
use crate::io::write_atomic;

/// AdamW's settings; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// `Var`s that share a learning rate: `lr_scale` times the optimizer's (PyTorch's parameter
/// groups). LoRA+ (Hayou et al. 2024) gives B a larger rate than A; weights trained in full
/// beside adapters usually want a smaller one.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub name: String,
    pub vars: Vec<(String, Var)>,
    pub lr_scale: f64,
}

/// AdamW over the `Var`s it was given, and nothing else.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    /// Each var's learning rate as a multiple of `params.lr` (1 unless built from groups).
    lr_scale: Vec<f64>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: usize,
    pub params: AdamWParams,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        if vars.is_empty() {
            return Err(LoraError::config("optimizer", "has no trainable parameters (did inject_lora run?)"));
        }
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let lr_scale = vec![1.0; vars.len()];
        Ok(AdamW { vars, lr_scale, m, v, steps: 0, params })
    }

    /// AdamW over parameter groups, each at its own multiple of the learning rate. A group with
    /// a scale that is not positive and finite is an error naming it.
    pub fn with_groups(groups: Vec<ParamGroup>, params: AdamWParams) -> Result<Self> {
        let mut scales = Vec::new();
        let mut vars = Vec::new();
        for g in groups {
            if !(g.lr_scale.is_finite() && g.lr_scale > 0.0) {
                let why = format!("group `{}` has learning-rate scale {}", g.name, g.lr_scale);
                return Err(LoraError::config("optimizer", why));
            }
            scales.extend(std::iter::repeat_n(g.lr_scale, g.vars.len()));
            vars.extend(g.vars);
        }
        let mut opt = AdamW::new(vars, params)?;
        opt.lr_scale = scales;
        Ok(opt)
    }

    /// How many updates have been applied.
    pub fn steps(&self) -> usize {
        self.steps
    }

    pub(crate) fn set_lr(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// The `Var`s being trained, with their names.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update from `grads`. A `Var` without a gradient is left alone (its moments too).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let AdamWParams { lr: base_lr, beta1, beta2, eps, weight_decay } = self.params;
        let t = self.steps as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let lr = base_lr * self.lr_scale[i];
            let g = g.to_dtype(var.dtype())?;
            // On the CPU the same update runs in place, without parameter-sized temporaries
            // (src/fused/adamw.rs); the tensor ops below are the reference it is tested against.
            if crate::compute::fused::usable(&[var.as_tensor(), &self.m[i], &self.v[i], &g])
                && var.as_tensor().is_contiguous()
                && self.m[i].is_contiguous()
                && self.v[i].is_contiguous()
            {
                let s = crate::compute::fused::adamw::AdamWStep { lr, beta1, beta2, eps, weight_decay, c1, c2 };
                crate::compute::fused::adamw::step(var.as_tensor(), &self.m[i], &self.v[i], &g, s)?;
                continue;
            }
            self.m[i] = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            self.v[i] = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&self.m[i] / c1)?;
            let v_hat = (&self.v[i] / c2)?;
            let decayed = (var.as_tensor() * (1.0 - lr * weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Write the moments and the step count to `path` (atomically).
    pub(crate) fn save_state(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            tensors.insert(format!("m.{name}"), self.m[i].clone());
            tensors.insert(format!("v.{name}"), self.v[i].clone());
        }
        let meta = HashMap::from([("steps".to_string(), self.steps.to_string())]);
        let bytes = safetensors::serialize(&tensors, Some(meta))
            .map_err(|e| LoraError::file(path, format!("cannot serialize optimizer state: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Restore the state `AdamW::save_state` wrote, for the same `Var` names and shapes.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| LoraError::io(path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| LoraError::file(path, format!("is not an optimizer state file: {e}")))?;
        let steps = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("steps"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LoraError::file(path, "has no `steps` metadata"))?;
        let dev = self.vars[0].1.device().clone();
        let loaded = candle_core::safetensors::load_buffer(&bytes, &dev)?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (key, slot) in [(format!("m.{name}"), &mut self.m[i]), (format!("v.{name}"), &mut self.v[i])] {
                let t = loaded.get(&key).ok_or_else(|| {
                    LoraError::file(path, format!("has no tensor `{key}` (the run's parameters differ)"))
                })?;
                if t.dims() != var.dims() {
                    return Err(LoraError::shape(
                        format!("`{key}` in {}", path.display()),
                        format!("{:?}", var.dims()),
                        t.dims(),
                    ));
                }
                *slot = t.to_dtype(var.dtype())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}
