//! Files other tools read: a merged model as a Hugging Face checkpoint folder, and an adapter as
//! PEFT writes it, including GPT-2 adapters on single q, k or v slices.
//!
//! PEFT has no per-slice adapter for GPT-2's fused `c_attn`. But adapters on some slices S of it
//! are exactly one ordinary adapter on the whole layer (the block construction): A stacks the
//! slices' A matrices ([|S| r, d]), B is block-diagonal ([3d, |S| r], zero rows for the slices
//! without an adapter), and alpha grows by |S| so that PEFT's alpha / r stays each slice's scaling.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::io::write_atomic;
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;
use crate::models::CausalLm;
use crate::peft::file::write_adapter;
use crate::peft::format::{peft_key, AdapterConfig, LoraMatrix};
use crate::tasks::t04_save_load::lora_tensors;

fn serialize(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<Vec<u8>> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors, Some(meta)).map_err(|e| LoraError::file(path, format!("cannot serialize: {e}")))
}

/// Write a merged (adapter-free) model as a Hugging Face folder: `config.json`,
/// `model.safetensors` (Hugging Face names and layouts, tied weights once), and `tokenizer.json`
/// when given. transformers' `from_pretrained` and this crate's loader both read it.
pub fn save_pretrained(model: &dyn CausalLm, tokenizer: Option<&Tokenizer>, dir: &Path) -> Result<()> {
    save_pretrained_as(model, tokenizer, dir, None)
}

/// [`save_pretrained`] with every floating-point weight converted to `dtype` (bf16 halves the
/// file; a merged QLoRA model is f32 after dequantization). `None` keeps the model's dtypes.
pub fn save_pretrained_as(
    model: &dyn CausalLm,
    tokenizer: Option<&Tokenizer>,
    dir: &Path,
    dtype: Option<candle_core::DType>,
) -> Result<()> {
    let convert = |t: Tensor| -> Result<Tensor> {
        Ok(match dtype {
            Some(d) if t.dtype().is_float() => t.to_dtype(d)?,
            _ => t,
        })
    };
    let tensors: BTreeMap<String, Tensor> =
        model.hf_tensors()?.into_iter().map(|(n, t)| Ok((n, convert(t)?.contiguous()?))).collect::<Result<_>>()?;
    std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    let weights = dir.join("model.safetensors");
    write_atomic(&weights, &serialize(&tensors, &weights)?)?;
    if let Some(tok) = tokenizer {
        let json = tok.to_string(true).map_err(|e| LoraError::config("tokenizer", e.to_string()))?;
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
    }
    let config = serde_json::to_string_pretty(&model.hf_config()).expect("a config serializes");
    write_atomic(&dir.join("config.json"), config.as_bytes())
}

/// Save the adapters of `model` as PEFT loads them. Like `save_lora_weights`, plus: GPT-2 gets
/// `fan_in_fan_out: true`, and adapters on split `c_attn.q/.k/.v` slices are written as one
/// `c_attn` adapter by the block construction (every block must adapt the same slices).
pub fn save_peft_adapter(model: &dyn LoraModel, config: &LoraConfig, dir: &Path) -> Result<()> {
    // Task 1.4's keyed tensors (config and ranks checked, at least one adapter), regrouped.
    let mut keyed = lora_tensors(model, config)?;
    let mut tensors = BTreeMap::new();
    let mut targets = Vec::new();
    // Per fused layer: the adapted slices (index 0..3, A, B) in q, k, v order.
    let mut fused: BTreeMap<String, Vec<(usize, Tensor, Tensor)>> = BTreeMap::new();
    for (name, _) in model.linears() {
        let (Some(a), Some(b)) =
            (keyed.remove(&peft_key(&name, LoraMatrix::A)), keyed.remove(&peft_key(&name, LoraMatrix::B)))
        else {
            continue;
        };
        let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
        let slice = ["q", "k", "v"].iter().position(|s| name.ends_with(&format!(".c_attn.{s}")));
        match slice {
            Some(i) => fused.entry(name[..name.len() - 2].to_string()).or_default().push((i, a, b)),
            None => {
                tensors.insert(peft_key(&name, LoraMatrix::A), a);
                tensors.insert(peft_key(&name, LoraMatrix::B), b);
                targets.push(name);
            }
        }
    }
    let mut r = config.r;
    let mut alpha = config.alpha;
    let slice_counts: Vec<usize> = fused.values().map(Vec::len).collect();
    if let Some(&n) = slice_counts.first() {
        if slice_counts.iter().any(|&c| c != n) {
            return Err(LoraError::config(
                "c_attn slices",
                "every block must adapt the same q/k/v slices to export to PEFT",
            ));
        }
        if !tensors.is_empty() && n != 1 {
            return Err(LoraError::config(
                "c_attn slices",
                "two slices or more make the fused rank |S| r, which differs from the other modules' r; \
                 PEFT's rank_pattern is not written yet: export them separately",
            ));
        }
        // PEFT's scaling is alpha / r (rsLoRA: alpha / sqrt r); keep it for the fused rank n r.
        let grow = if config.use_rslora { (n as f64).sqrt() } else { n as f64 };
        (r, alpha) = (n * config.r, grow * config.alpha);
    }
    for (module, slices) in fused {
        let d = slices[0].2.dim(0)?;
        let a = Tensor::cat(&slices.iter().map(|(_, a, _)| a.clone()).collect::<Vec<_>>(), 0)?;
        let mut b = Tensor::zeros((3 * d, r), DType::F32, a.device())?;
        for (j, (i, _, bs)) in slices.iter().enumerate() {
            b = b.slice_assign(&[i * d..(i + 1) * d, j * config.r..(j + 1) * config.r], bs)?;
        }
        tensors.insert(peft_key(&module, LoraMatrix::A), a);
        tensors.insert(peft_key(&module, LoraMatrix::B), b);
        targets.push(module);
    }
    let mut saved = config.clone();
    (saved.r, saved.alpha, saved.target_modules) = (r, alpha, targets);
    let mut adapter_config = AdapterConfig::from_lora_config(&saved, &model.name_or_path());
    adapter_config.fan_in_fan_out = model.conv1d_layout();
    write_adapter(dir, &adapter_config, &tensors)
}
