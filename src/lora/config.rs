//! `LoraConfig`: the settings of an adapter, with PEFT's names and defaults where PEFT has them.
//!
//! Hu et al. 2021, section 4.1: the update of a weight W0 [out, in] is `delta W = B A` with
//! A [r, in], B [out, r], scaled by alpha / r. rsLoRA (Kalajdzievski 2023) scales by
//! alpha / sqrt(r) instead, so that the update's size does not shrink as r grows.

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};

/// How the A matrix starts. B always starts at zero, so the adapted model equals the base model
/// until training moves B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LoraInit {
    /// PEFT's default (`init_lora_weights=True`): `kaiming_uniform_(A, a=sqrt(5))`, which is
    /// uniform on [-1/sqrt(in), 1/sqrt(in)].
    #[default]
    KaimingUniform,
    /// PEFT's `init_lora_weights="gaussian"`: A ~ N(0, (1/r)^2).
    Gaussian,
}

/// The settings of one LoRA adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank r of the update. Small (1-64): the paper's point is that a low rank suffices.
    pub r: usize,
    /// alpha: with scaling alpha / r, changing r does not change the effective learning rate
    /// much, so alpha can stay fixed while r is tuned (paper, section 4.1).
    pub alpha: f64,
    /// Dropout on the adapter's input, in training only (PEFT's `lora_dropout`).
    pub dropout: f32,
    /// Which linear layers get an adapter: a full module name, a dotted suffix of one
    /// (`"q_proj"` matches `model.layers.0.self_attn.q_proj`), or `"all-linear"` for every linear
    /// layer but the output head.
    pub target_modules: Vec<String>,
    /// Scale by alpha / sqrt(r) (rsLoRA) instead of alpha / r.
    pub use_rslora: bool,
    /// How A starts.
    pub init: LoraInit,
    /// Seed of the generator that draws A, so that a run can be repeated exactly.
    pub seed: u64,
}

impl Default for LoraConfig {
    /// PEFT's defaults (r 8, alpha 8, no dropout) on the attention query and value projections,
    /// the paper's choice for GPT-3 (section 7.1).
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            use_rslora: false,
            init: LoraInit::KaimingUniform,
            seed: 0,
        }
    }
}

impl LoraConfig {
    /// A config with rank `r`, `alpha` and the given targets; everything else as [`Default`].
    pub fn new(r: usize, alpha: f64, target_modules: &[&str]) -> Self {
        LoraConfig {
            r,
            alpha,
            target_modules: target_modules.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Check every setting; the error names the setting and what it must be.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(LoraError::config("r", "the rank must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::config("alpha", format!("must be finite and > 0, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::config("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(LoraError::config("target_modules", "name at least one module, or \"all-linear\""));
        }
        if let Some(t) = self.target_modules.iter().find(|t| t.is_empty()) {
            return Err(LoraError::config("target_modules", format!("contains an empty name {t:?}")));
        }
        Ok(())
    }
}

/// The target that selects every linear layer but the output head, as in PEFT.
pub const ALL_LINEAR: &str = "all-linear";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_bad_setting() {
        let bad = |f: fn(&mut LoraConfig), what: &str| {
            let mut c = LoraConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(what), "{err}");
        };
        bad(|c| c.r = 0, "r");
        bad(|c| c.alpha = f64::NAN, "alpha");
        bad(|c| c.dropout = 1.0, "dropout");
        bad(|c| c.target_modules.clear(), "target_modules");
        assert!(LoraConfig::default().validate().is_ok());
    }
}
