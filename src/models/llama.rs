//! The Llama family (Touvron et al. 2023) named as Hugging Face's `LlamaForCausalLM`, written for
//! training. SmolLM2-135M is the target: 30 layers, hidden 576, 9 query heads sharing 3 key/value
//! heads (grouped-query attention), RoPE with theta 1e5, RMSNorm, a SiLU-gated MLP, tied head.
//!
//! The same code runs Qwen2 / Qwen2.5 and Mistral, which differ from Llama only in their biases
//! and sliding window ([`super::family`]).
//!
//! Module names: `model.embed_tokens`, `model.layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}`, `model.norm`,
//! and `lm_head` when the head is not tied to the embeddings.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::family::{Family, WindowSettings};
use super::weights::Weights;
use super::{check_ids, plain_weights, CausalLm, KvCache};
use crate::compute::ops::composed::split_heads;
use crate::compute::ops::linear_forward;
use crate::compute::ops::{causal_attention_masked, embedding, rms_norm, rope, self_attention, swiglu};
use std::sync::Arc;

use crate::compute::quantized::QuantizedWeight;
use crate::error::{LoraError, Result};
use crate::lora::linear::Linear;
use crate::lora::model::LoraModel;
use crate::lora::param::Param;
use crate::lora::slot::LinearSlot;

/// transformers 5 writes `rope_parameters: {rope_theta, rope_type}`; older configs a top-level
/// `rope_theta`. Both are read.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// The fields of a Llama, Qwen2 or Mistral `config.json` this model reads.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `qwen2` or `mistral` (see [`Family`]).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads; `None` means one per query head (no grouping).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Only `null` (plain RoPE) is implemented; scaled variants are refused by name.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One id or a list, as configs write it.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// The longest sequence the model was trained on (GGUF: `llama.context_length`). RoPE has no
    /// table to run out of, so nothing would stop a longer one but memory: attention past it is
    /// untrained, and its scores grow with the square of the length (10,000 tokens into SmolLM2
    /// asked for 3.6 GB and aborted). Sequences longer than this are an error naming both numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// Mistral, Qwen2: how many keys (itself included) a query sees on a sliding-window layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2: the window is used only when this is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2 without `layer_types`: the layers from this one on slide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Qwen2 (transformers 5): `full_attention` or `sliding_attention` for each layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
}

fn default_model_type() -> String {
    "llama".into()
}

fn default_eps() -> f64 {
    1e-6
}

fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// RoPE's base, from `rope_parameters`, then `rope_theta`, then transformers' default 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.as_ref().and_then(|p| p.rope_theta).or(self.rope_theta).unwrap_or(10_000.0)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The end-of-sequence ids.
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|n| n as u32)).collect(),
            _ => Vec::new(),
        }
    }

    /// Which member of the family this is; an unknown `model_type` is an error.
    pub fn family(&self) -> Result<Family> {
        Family::from_model_type(&self.model_type)
    }

    /// Layer `layer`'s sliding window, `None` for plain causal attention.
    pub fn window(&self, layer: usize) -> Result<Option<usize>> {
        let settings = WindowSettings {
            sliding_window: self.sliding_window,
            use_sliding_window: self.use_sliding_window,
            max_window_layers: self.max_window_layers,
            layer_types: self.layer_types.as_deref(),
        };
        Ok(self.family()?.window(layer, &settings))
    }

    /// Refuse what this implementation does not compute, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let family = self.family()?;
        crate::compute::ops::check_window(self.sliding_window)?;
        if let Some(types) = &self.layer_types {
            if family == Family::Qwen2 && types.len() != self.num_hidden_layers {
                return Err(LoraError::config(
                    "layer_types",
                    format!("has {} entries for {} layers", types.len(), self.num_hidden_layers),
                ));
            }
            if let Some(bad) = types.iter().find(|t| !["full_attention", "sliding_attention"].contains(&t.as_str())) {
                return Err(LoraError::config(
                    "layer_types",
                    format!("has `{bad}`; only `full_attention` and `sliding_attention` are implemented"),
                ));
            }
        }
        let rope_type = self.rope_parameters.as_ref().and_then(|p| p.rope_type.clone()).unwrap_or("default".into());
        if rope_type != "default" || self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(LoraError::config(
                "Llama rope",
                "scaled RoPE (rope_type other than `default`) is not implemented",
            ));
        }
        if self.hidden_act != "silu" {
            return Err(LoraError::config(
                "Llama hidden_act",
                format!("is `{}`, only `silu` is implemented", self.hidden_act),
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(LoraError::config(
                "Llama config",
                "num_attention_heads must be a multiple of num_key_value_heads",
            ));
        }
        Ok(())
    }
}

const ATTN: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
const MLP: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

#[derive(Clone, Debug)]
struct Layer {
    input_layernorm: Param,
    /// q, k, v, o
    attn: [LinearSlot; 4],
    post_attention_layernorm: Param,
    /// gate, up, down
    mlp: [LinearSlot; 3],
    /// The sliding window of this layer's attention, if it has one.
    window: Option<usize>,
}

/// A Llama-architecture causal LM with a slot for an adapter on every linear layer.
#[derive(Clone, Debug)]
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Param,
    /// The embedding table kept quantized (QLoRA); `embed_tokens` is then a stand-in with its
    /// shape only (see [`LoraModel::quantized_params`]).
    embed_quantized: Option<Arc<dyn QuantizedWeight>>,
    layers: Vec<Layer>,
    norm: Param,
    /// `None` when the head is tied to `embed_tokens`.
    lm_head: Option<LinearSlot>,
    /// RoPE's inverse frequencies [head_dim / 2], f32.
    inv_freq: Tensor,
    name_or_path: String,
    device: Device,
}

fn linear(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<LinearSlot> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
    Ok(LinearSlot::Linear(Linear::frozen(&weight, b.as_ref())?))
}

/// The embedding table's parameter name.
const EMBED: &str = "model.embed_tokens.weight";

impl Llama {
    /// The embedding table [vocab, d], dequantized if it is kept quantized (a transient copy,
    /// dropped after the op that reads it).
    fn embedding_table(&self) -> Result<Tensor> {
        match &self.embed_quantized {
            Some(q) => Ok(q.dequantize(&self.device)?.to_dtype(self.embed_tokens.tensor().dtype())?),
            None => Ok(self.embed_tokens.tensor().clone()),
        }
    }

    /// Build the model from its config and weights; every weight starts frozen.
    pub fn new(config: LlamaConfig, w: &Weights, name_or_path: &str) -> Result<Self> {
        config.validate()?;
        let family = config.family()?;
        let (d, hd) = (config.hidden_size, config.head_dim());
        let (q_out, kv_out) = (config.num_attention_heads * hd, config.kv_heads() * hd);
        let embed = w.get("model.embed_tokens.weight", &[config.vocab_size, d])?;
        let device = embed.device().clone();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let outs = [q_out, kv_out, kv_out, d];
            let ins = [d, d, d, q_out];
            let attn = (0..4)
                .map(|j| {
                    let bias = family.attention_bias(j, config.attention_bias);
                    linear(w, &format!("{p}.self_attn.{}", ATTN[j]), outs[j], ins[j], bias)
                })
                .collect::<Result<Vec<_>>>()?;
            let (mo, mi) = ([config.intermediate_size, config.intermediate_size, d], [d, d, config.intermediate_size]);
            let mlp = (0..3)
                .map(|j| linear(w, &format!("{p}.mlp.{}", MLP[j]), mo[j], mi[j], family.mlp_bias(config.mlp_bias)))
                .collect::<Result<Vec<_>>>()?;
            layers.push(Layer {
                input_layernorm: Param::frozen(&w.get(&format!("{p}.input_layernorm.weight"), &[d])?),
                attn: attn.try_into().expect("four attention projections"),
                post_attention_layernorm: Param::frozen(&w.get(&format!("{p}.post_attention_layernorm.weight"), &[d])?),
                mlp: mlp.try_into().expect("three MLP projections"),
                window: config.window(i)?,
            });
        }
        // A tied checkpoint may still list `lm_head.weight` (a copy of the embeddings); untied
        // ones must.
        let lm_head =
            if config.tie_word_embeddings { None } else { Some(linear(w, "lm_head", config.vocab_size, d, false)?) };
        let inv_freq: Vec<f32> =
            (0..hd / 2).map(|i| (1.0 / config.rope_theta().powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        Ok(Llama {
            inv_freq: Tensor::new(inv_freq, &device)?,
            embed_tokens: Param::frozen(&embed),
            embed_quantized: None,
            norm: Param::frozen(&w.get("model.norm.weight", &[d])?),
            layers,
            lm_head,
            config,
            name_or_path: name_or_path.to_string(),
            device,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// cos and sin [seq, head_dim / 2] for positions `offset..offset + seq`, in `dtype`.
    fn rope_tables(&self, offset: usize, seq: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = Tensor::arange(offset as u32, (offset + seq) as u32, &self.device)?;
        self.rope_tables_at(&pos, dtype)
    }

    /// cos and sin [seq, head_dim / 2] for the positions `pos` [seq] (u32), in `dtype`.
    fn rope_tables_at(&self, pos: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = pos.to_dtype(DType::F32)?;
        let freqs = pos.unsqueeze(1)?.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }
}

/// RoPE on `x` [batch, heads, seq, hd] with each row's own tables `cos`, `sin` [batch, seq,
/// hd / 2] (a left-padded batch; generation only, so candle's ops and their backward do).
/// Hugging Face's "rotate half": `x cos + rotate_half(x) sin`, `rotate_half(x) = [-x2, x1]`.
fn rope_rows(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
    let half = x.dim(3)? / 2;
    let cos = Tensor::cat(&[cos, cos], 2)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], 2)?.unsqueeze(1)?;
    let rotated = Tensor::cat(&[&x.narrow(3, half, half)?.neg()?, &x.narrow(3, 0, half)?], 3)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

impl CausalLm for Llama {
    fn forward_hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>, train: bool) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (b, t) = check_ids(ids, self.config.vocab_size, offset, self.config.max_position_embeddings)?;
        let (nh, nkv, eps) = (self.config.num_attention_heads, self.config.kv_heads(), self.config.rms_norm_eps);
        let mut h = embedding(ids, &self.embedding_table()?)?;
        let (cos, sin) = self.rope_tables(offset, t, h.dtype())?;
        // A left-padded batch: each row's own positions and a mask over the padding keys.
        let (row_tables, key_mask) = match cache.as_deref() {
            Some(c) => match c.row_positions(b, t)? {
                Some(rows) => {
                    // [batch * t] positions -> tables [batch, t, hd / 2].
                    let flat: Vec<u32> = rows.concat();
                    let (cos, sin) = self.rope_tables_at(&Tensor::new(flat, &self.device)?, h.dtype())?;
                    let tables = (cos.reshape((b, t, ()))?, sin.reshape((b, t, ()))?);
                    (Some(tables), c.key_mask(offset + t, h.dtype(), &self.device)?)
                }
                None => (None, None),
            },
            None => (None, None),
        };
        // ANCHOR: llama_layer
        for (i, layer) in self.layers.iter().enumerate() {
            let a = rms_norm(&h, layer.input_layernorm.tensor(), eps)?;
            let [q, k, v, o] = &layer.attn;
            let (q, k, v) = (q.forward(&a, train)?, k.forward(&a, train)?, v.forward(&a, train)?);
            let y =
                match cache.as_deref_mut() {
                    // A whole sequence: one attention op in the projections' layout, RoPE inside.
                    None => self_attention(&q, &k, &v, nh, nkv, Some((&cos, &sin)), layer.window)?,
                    // Generation: rotate, append to the cache, attend over everything cached.
                    Some(c) => {
                        let (q, k) = (split_heads(&q, nh)?, split_heads(&k, nkv)?);
                        let (q, k) = match &row_tables {
                            None => (rope(&q, &cos, &sin)?, rope(&k, &cos, &sin)?),
                            Some(tables) => (rope_rows(&q, tables)?, rope_rows(&k, tables)?),
                        };
                        let (k, v) = c.append(i, k, split_heads(&v, nkv)?)?;
                        causal_attention_masked(&q, &k, &v, key_mask.as_ref(), layer.window)?
                            .transpose(1, 2)?
                            .reshape((b, t, ()))?
                    }
                };
            h = o.forward_residual(&h, &y, train)?;
            let m = rms_norm(&h, layer.post_attention_layernorm.tensor(), eps)?;
            let [gate, up, down] = &layer.mlp;
            let g = swiglu(&gate.forward(&m, train)?, &up.forward(&m, train)?)?;
            h = down.forward_residual(&h, &g, train)?;
        }
        // ANCHOR_END: llama_layer
        rms_norm(&h, self.norm.tensor(), eps)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(hidden, false),
            None => linear_forward(hidden, &self.embedding_table()?, None),
        }
    }

    fn head_weight(&self) -> Result<Option<Tensor>> {
        Ok(match &self.lm_head {
            None => Some(self.embedding_table()?),
            Some(LinearSlot::Linear(l)) if l.bias.is_none() => Some(l.weight.tensor().clone()),
            Some(_) => None,
        })
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> Option<usize> {
        self.config.max_position_embeddings
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn hf_config(&self) -> serde_json::Value {
        let mut c = serde_json::to_value(&self.config).expect("the config serializes");
        let theta = self.config.rope_theta();
        let family = self.config.family().expect("checked when the model was built");
        c["model_type"] = family.model_type().into();
        c["architectures"] = serde_json::json!([family.architecture()]);
        c["rope_theta"] = theta.into();
        c["rope_parameters"] = serde_json::json!({"rope_theta": theta, "rope_type": "default"});
        c["num_key_value_heads"] = self.config.kv_heads().into();
        c["head_dim"] = self.config.head_dim().into();
        c
    }

    fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self.params().into_iter().map(|(n, p)| (n, p.tensor().clone())).collect();
        // A quantized embedding is exported dequantized, not as its stand-in.
        if self.embed_quantized.is_some() {
            out.retain(|(n, _)| n != EMBED);
            out.push((EMBED.to_string(), self.embedding_table()?));
        }
        for (name, slot) in self.linears() {
            let (w, b) = plain_weights(&name, slot)?;
            out.push((format!("{name}.weight"), w));
            if let Some(b) = b {
                out.push((format!("{name}.bias"), b));
            }
        }
        Ok(out)
    }
}

impl LoraModel for Llama {
    fn linears(&self) -> Vec<(String, &LinearSlot)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(ATTN.iter().zip(&l.attn).map(|(n, s)| (format!("model.layers.{i}.self_attn.{n}"), s)));
            out.extend(MLP.iter().zip(&l.mlp).map(|(n, s)| (format!("model.layers.{i}.mlp.{n}"), s)));
        }
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".into(), head));
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LinearSlot)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.extend(ATTN.iter().zip(l.attn.iter_mut()).map(|(n, s)| (format!("model.layers.{i}.self_attn.{n}"), s)));
            out.extend(MLP.iter().zip(l.mlp.iter_mut()).map(|(n, s)| (format!("model.layers.{i}.mlp.{n}"), s)));
        }
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head".into(), head));
        }
        out
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("model.layers.{i}.input_layernorm.weight"), &l.input_layernorm));
            out.push((format!("model.layers.{i}.post_attention_layernorm.weight"), &l.post_attention_layernorm));
        }
        out.push(("model.norm.weight".into(), &self.norm));
        out
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &mut self.embed_tokens)];
        for (i, l) in self.layers.iter_mut().enumerate() {
            out.push((format!("model.layers.{i}.input_layernorm.weight"), &mut l.input_layernorm));
            out.push((format!("model.layers.{i}.post_attention_layernorm.weight"), &mut l.post_attention_layernorm));
        }
        out.push(("model.norm.weight".into(), &mut self.norm));
        out
    }

    fn output_head(&self) -> Option<&str> {
        self.lm_head.as_ref().map(|_| "lm_head")
    }

    fn quantized_params(&self) -> Vec<(String, Arc<dyn QuantizedWeight>)> {
        self.embed_quantized.iter().map(|q| (EMBED.to_string(), q.clone())).collect()
    }

    fn set_quantized_param(&mut self, name: &str, weight: Arc<dyn QuantizedWeight>) -> Result<bool> {
        if name != EMBED {
            return Ok(false);
        }
        let dims = self.embed_tokens.tensor().dims2()?;
        if weight.dims() != dims {
            return Err(LoraError::shape(
                "quantized embedding table",
                format!("[{}, {}]", dims.0, dims.1),
                &[weight.dims().0, weight.dims().1],
            ));
        }
        let dtype = self.embed_tokens.tensor().dtype();
        let stand_in = Tensor::zeros((), dtype, &self.device)?.broadcast_as(dims)?;
        self.embed_tokens = Param::frozen(&stand_in);
        self.embed_quantized = Some(weight);
        Ok(true)
    }

    fn name_or_path(&self) -> String {
        self.name_or_path.clone()
    }
}
