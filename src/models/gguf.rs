//! Read a Llama- or Qwen2-architecture GGUF file (llama.cpp's format) as Hugging Face weights:
//! the quantized tensors are dequantized, renamed, and q/k are put back in Hugging Face's row
//! order.
//!
//! For `llama`, llama.cpp's converter permutes the rows of `q_proj` and `k_proj` so that its RoPE
//! can rotate adjacent pairs of values; Hugging Face's rotates the two halves of each head. We
//! undo the permutation (the inverse of `permute` in llama.cpp's `convert_hf_to_gguf.py`), so the
//! same model code and the same adapters serve safetensors and GGUF checkpoints. For `qwen2` the
//! converter leaves the rows alone (llama.cpp rotates Qwen2's halves, "NEOX" RoPE), and the file
//! carries the q, k, v biases (`blk.N.attn_q.bias`). (A Mistral GGUF is written as `llama`.)

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::llama::{LlamaConfig, RopeParameters};
use super::weights::Weights;
use crate::error::{LoraError, Result};

/// A GGUF file read into memory: its metadata and its file handle.
pub struct GgufFile {
    pub content: Content,
    file: File,
    path: std::path::PathBuf,
}

impl GgufFile {
    /// Open `path` and read its header (metadata and tensor table, not the tensors).
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| LoraError::io(path, e))?;
        let content =
            Content::read(&mut file).map_err(|e| LoraError::file(path, format!("is not a readable GGUF file: {e}")))?;
        Ok(GgufFile { content, file, path: path.to_path_buf() })
    }

    fn meta(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| LoraError::file(&self.path, format!("has no metadata `{key}`")))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|e| LoraError::file(&self.path, format!("metadata `{key}` is not an integer: {e}")))
    }

    fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self.meta(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|e| LoraError::file(&self.path, format!("metadata `{key}` is not a number: {e}")))
    }

    /// A string metadata entry, if present.
    pub(crate) fn meta_str(&self, key: &str) -> Option<&str> {
        self.content.metadata.get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
    }

    /// The Hugging Face config this file's metadata describes: `llama` and `qwen2` are supported.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.meta_str("general.architecture").unwrap_or("(none)");
        if !["llama", "qwen2"].contains(&arch) {
            return Err(LoraError::file(
                &self.path,
                format!(
                    "has architecture `{arch}`; this crate reads GGUF files of the `llama` and `qwen2` architectures"
                ),
            ));
        }
        // Every key is under the architecture's name: `llama.block_count`, `qwen2.block_count`.
        let key = |k: &str| format!("{arch}.{k}");
        let heads = self.meta_usize(&key("attention.head_count"))?;
        let hidden = self.meta_usize(&key("embedding_length"))?;
        let vocab = match self.meta_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => self.meta("tokenizer.ggml.tokens")?.to_vec().map(Vec::len).unwrap_or(0),
        };
        let id = |key: &str| self.meta_usize(key).ok().map(|x| x as u32);
        Ok(LlamaConfig {
            model_type: arch.into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.meta_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.meta_usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(self.meta_usize(&key("attention.head_count_kv")).unwrap_or(heads)),
            head_dim: Some(self.meta_usize(&key("rope.dimension_count")).unwrap_or(hidden / heads)),
            rms_norm_eps: self.meta_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: None,
            rope_parameters: Some(RopeParameters {
                rope_theta: Some(self.meta_f64(&key("rope.freq_base")).unwrap_or(10_000.0)),
                rope_type: Some("default".into()),
            }),
            rope_scaling: None,
            // Without an `output.weight` the head is the embedding table.
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: false,
            mlp_bias: false,
            hidden_act: "silu".into(),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: id("tokenizer.ggml.eos_token_id").map(serde_json::Value::from),
            max_position_embeddings: self.meta_usize(&key("context_length")).ok(),
            sliding_window: None,
            use_sliding_window: None,
            max_window_layers: None,
            layer_types: None,
        })
    }

    /// Every tensor, dequantized to f32, under its Hugging Face name and in Hugging Face layout,
    /// then converted to `dtype`.
    pub fn weights(&mut self, config: &LlamaConfig, dtype: DType, device: &Device) -> Result<Weights> {
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        let mut tensors = HashMap::new();
        for name in names {
            let hf = hf_name(&name)
                .ok_or_else(|| LoraError::file(&self.path, format!("has tensor `{name}`, unknown to a llama model")))?;
            let q = self
                .content
                .tensor(&mut self.file, &name, device)
                .map_err(|e| LoraError::file(&self.path, format!("tensor `{name}` cannot be read: {e}")))?;
            let mut t = q.dequantize(device)?;
            if let Some(heads) = permuted_heads(config, &hf) {
                t = unpermute(&t, heads)?;
            }
            tensors.insert(hf, t);
        }
        Weights::from_tensors(tensors, &self.path, dtype)
    }
}
impl GgufFile {
    /// The linear layers' weights kept in the file's block formats (llama.cpp's Q4_1, Q8_0, ...),
    /// by Hugging Face module name (`model.layers.0.self_attn.q_proj`). q and k get the same
    /// row order as the dense load ([`unpermute`]), moved block row by block row, exactly.
    /// Tensors the file stores unquantized (F32, F16) are left out.
    pub fn quantized_linears(
        &mut self,
        config: &LlamaConfig,
    ) -> Result<HashMap<String, crate::compute::quantized::GgufWeight>> {
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        let mut out = HashMap::new();
        for name in names {
            let Some(hf) = hf_name(&name) else { continue };
            let Some(module) = hf.strip_suffix(".weight") else { continue };
            if !(module.ends_with("_proj") || module == "lm_head") {
                continue;
            }
            let q = self
                .content
                .tensor(&mut self.file, &name, &Device::Cpu)
                .map_err(|e| LoraError::file(&self.path, format!("tensor `{name}` cannot be read: {e}")))?;
            use candle_core::quantized::GgmlDType;
            if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                continue;
            }
            let w = crate::compute::quantized::GgufWeight(q);
            let w = match permuted_heads(config, &hf) {
                Some(h) => {
                    w.permute_rows(&unpermute_order(crate::compute::quantized::QuantizedWeight::dims(&w).0, h))?
                }
                None => w,
            };
            out.insert(module.to_string(), w);
        }
        Ok(out)
    }
}

impl GgufFile {
    /// One tensor in the file's own block format (the embedding's Q8_0 in SmolLM2's file);
    /// `None` if the file stores it unquantized.
    pub fn quantized_tensor(&mut self, gguf_name: &str) -> Result<Option<crate::compute::quantized::GgufWeight>> {
        use candle_core::quantized::GgmlDType;
        let q = self
            .content
            .tensor(&mut self.file, gguf_name, &Device::Cpu)
            .map_err(|e| LoraError::file(&self.path, format!("tensor `{gguf_name}` cannot be read: {e}")))?;
        Ok((!matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16))
            .then_some(crate::compute::quantized::GgufWeight(q)))
    }
}

/// The head count to unpermute the Hugging Face tensor `hf` by: q and k weights of a `llama`
/// file; `None` for everything else, and for every tensor of a `qwen2` file.
fn permuted_heads(config: &LlamaConfig, hf: &str) -> Option<usize> {
    if config.model_type != "llama" {
        return None;
    }
    if hf.ends_with("q_proj.weight") {
        Some(config.num_attention_heads)
    } else if hf.ends_with("k_proj.weight") {
        Some(config.kv_heads())
    } else {
        None
    }
}

/// Row `i` of [`unpermute`]'s result is row `order[i]` of its input.
pub fn unpermute_order(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let mut order = Vec::with_capacity(rows);
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..hd / 2 {
                order.push(h * hd + i * 2 + j);
            }
        }
    }
    order
}

/// The Hugging Face name of a llama.cpp tensor name.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    // Weights, and the biases Qwen2 files carry for q, k and v.
    let (part, kind) = match part.strip_suffix(".weight") {
        Some(p) => (p, "weight"),
        None => (part.strip_suffix(".bias")?, "bias"),
    };
    let module = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{kind}"))
}

/// Undo llama.cpp's row permutation of a q or k weight [heads * head_dim, in]: within each head,
/// llama.cpp interleaves the two halves (rows 0, hd/2, 1, hd/2 + 1, ...); put them back.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?.transpose(1, 2)?.reshape((out, inp))?.contiguous()?)
}
