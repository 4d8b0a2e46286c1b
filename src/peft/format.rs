//! Hugging Face PEFT's on-disk format for LoRA adapters, so adapters move between this crate and
//! Python: `adapter_config.json` plus `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` ([r, in]) and `...lora_B.weight` ([out, r]).
//!
//! The `base_model.model.` prefix matters: without it PEFT finds no adapter weights and silently
//! runs the base model.

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};

use crate::lora::config::{LoraConfig, LoraInit};

/// File name of the adapter weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File name of the adapter config.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// What PEFT puts before a module name in its keys.
pub(crate) const PEFT_KEY_PREFIX: &str = "base_model.model.";

/// Which of the two LoRA matrices a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraMatrix {
    /// A, [r, in]: projects the input down to rank r.
    A,
    /// B, [out, r]: projects back up; starts at zero.
    B,
}

impl LoraMatrix {
    /// PEFT's name for the matrix: `lora_A` or `lora_B`.
    fn peft_name(self) -> &'static str {
        match self {
            LoraMatrix::A => "lora_A",
            LoraMatrix::B => "lora_B",
        }
    }
}

/// The safetensors key of one LoRA matrix of `module`, exactly as PEFT writes it.
pub fn peft_key(module: &str, matrix: LoraMatrix) -> String {
    format!("{PEFT_KEY_PREFIX}{module}.{}.weight", matrix.peft_name())
}

/// PEFT writes `target_modules` as a list, or as one string (a regex, or `"all-linear"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    One(String),
}

/// PEFT's `init_lora_weights`: `true` (Kaiming-uniform A), `false`, or a method name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    Flag(bool),
    Method(String),
}

/// `adapter_config.json`, with the fields PEFT's `LoraConfig` reads for a plain LoRA adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f32,
    pub target_modules: TargetModules,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
}

fn default_bias() -> String {
    "none".into()
}

fn default_init() -> InitLoraWeights {
    InitLoraWeights::Flag(true)
}

impl AdapterConfig {
    /// The config PEFT needs to rebuild `config`'s adapters on `base_model_name_or_path`.
    pub fn from_lora_config(config: &LoraConfig, base_model_name_or_path: &str) -> Self {
        AdapterConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: Some(base_model_name_or_path.to_string()),
            r: config.r,
            lora_alpha: config.alpha,
            lora_dropout: config.dropout,
            target_modules: TargetModules::List(config.target_modules.clone()),
            bias: "none".into(),
            fan_in_fan_out: false,
            use_rslora: config.use_rslora,
            init_lora_weights: match config.init {
                LoraInit::KaimingUniform => InitLoraWeights::Flag(true),
                LoraInit::Gaussian => InitLoraWeights::Method("gaussian".into()),
            },
            inference_mode: true,
            modules_to_save: None,
        }
    }

    /// Back to a [`LoraConfig`]; refuses what this crate cannot honour rather than ignoring it.
    pub(crate) fn to_lora_config(&self) -> Result<LoraConfig> {
        if self.peft_type != "LORA" {
            return Err(LoraError::config("peft_type", format!("expected \"LORA\", found {:?}", self.peft_type)));
        }
        if self.bias != "none" {
            return Err(LoraError::config("bias", format!("only \"none\" is supported, found {:?}", self.bias)));
        }
        let target_modules = match &self.target_modules {
            TargetModules::List(v) => v.clone(),
            TargetModules::One(s) if s == crate::lora::config::ALL_LINEAR => vec![s.clone()],
            TargetModules::One(s) => {
                return Err(LoraError::config(
                    "target_modules",
                    format!("a regex ({s:?}) is not supported; list the module names"),
                ))
            }
        };
        let init = match &self.init_lora_weights {
            InitLoraWeights::Flag(_) => LoraInit::KaimingUniform,
            InitLoraWeights::Method(m) if m == "gaussian" => LoraInit::Gaussian,
            // Other methods (PiSSA, OLoRA, ...) only change how A and B start; a saved adapter
            // carries its trained values, so loading it does not depend on them.
            InitLoraWeights::Method(_) => LoraInit::KaimingUniform,
        };
        let config = LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules,
            use_rslora: self.use_rslora,
            init,
            seed: 0,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_peft_s() {
        let key = peft_key("model.layers.3.self_attn.q_proj", LoraMatrix::B);
        assert_eq!(key, "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight");
        assert_eq!(peft_key("lm_head", LoraMatrix::A), "base_model.model.lm_head.lora_A.weight");
    }

    #[test]
    fn config_round_trips_and_refuses_what_it_cannot_honour() {
        let mut cfg = LoraConfig::new(16, 32.0, &["c_attn"]);
        cfg.use_rslora = true;
        cfg.init = LoraInit::Gaussian;
        let json = serde_json::to_string(&AdapterConfig::from_lora_config(&cfg, "gpt2")).unwrap();
        let back: AdapterConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_lora_config().unwrap(), cfg);

        // A PEFT config with a regex target and a trained bias cannot be loaded faithfully.
        let regex = r#"{"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"lora_alpha":16,"target_modules":".*proj"}"#;
        let err = serde_json::from_str::<AdapterConfig>(regex).unwrap().to_lora_config().unwrap_err();
        assert!(err.to_string().contains("target_modules"), "{err}");
        let bias =
            r#"{"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"lora_alpha":16,"target_modules":["q"],"bias":"all"}"#;
        let err = serde_json::from_str::<AdapterConfig>(bias).unwrap().to_lora_config().unwrap_err();
        assert!(err.to_string().contains("bias"), "{err}");
    }
}
