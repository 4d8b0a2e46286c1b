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
use super::table::{lora_model_accessors, modules, Embedding, RmsNorm};
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

// ANCHOR: llama_modules
/// `LlamaAttention`: the four projections, named as transformers names them.
#[derive(Clone, Debug)]
struct Attention {
    q_proj: LinearSlot,
    k_proj: LinearSlot,
    v_proj: LinearSlot,
    o_proj: LinearSlot,
    num_heads: usize,
    num_kv_heads: usize,
    /// The sliding window of this layer's attention, if it has one.
    window: Option<usize>,
}
modules!(Attention { q_proj, k_proj, v_proj, o_proj });

/// `LlamaMLP`: the SiLU-gated MLP.
#[derive(Clone, Debug)]
struct Mlp {
    gate_proj: LinearSlot,
    up_proj: LinearSlot,
    down_proj: LinearSlot,
}
modules!(Mlp { gate_proj, up_proj, down_proj });

/// `LlamaDecoderLayer`: pre-norm attention, then a pre-norm MLP, each added to the residual.
#[derive(Clone, Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    rms_norm_eps: f64,
}
modules!(DecoderLayer { input_layernorm, self_attn, post_attention_layernorm, mlp });

/// `LlamaModel`: the embeddings, the layers and the final norm, under `model.`.
#[derive(Clone, Debug)]
struct LlamaModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
}
modules!(LlamaModel { embed_tokens, layers, norm });

/// A Llama-architecture causal LM with a slot for an adapter on every linear layer.
#[derive(Clone, Debug)]
pub struct Llama {
    config: LlamaConfig,
    model: LlamaModel,
    /// `None` when the head is tied to `embed_tokens`.
    lm_head: Option<LinearSlot>,
    /// The embedding table kept quantized (QLoRA); `embed_tokens` is then a stand-in with its
    /// shape only (see [`LoraModel::quantized_params`]).
    embed_quantized: Option<Arc<dyn QuantizedWeight>>,
    /// RoPE's inverse frequencies [head_dim / 2], f32.
    inv_freq: Tensor,
    name_or_path: String,
    device: Device,
}
modules!(Llama { model, lm_head });
// ANCHOR_END: llama_modules

/// The embedding table's parameter name.
const EMBED: &str = "model.embed_tokens.weight";

fn linear(w: &Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<LinearSlot> {
    let weight = w.get(&format!("{name}.weight"), &[out, inp])?;
    let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
    Ok(LinearSlot::Linear(Linear::frozen(&weight, b.as_ref())?))
}

fn rms_norm_weight(w: &Weights, name: &str, d: usize) -> Result<RmsNorm> {
    Ok(RmsNorm { weight: Param::frozen(&w.get(&format!("{name}.weight"), &[d])?) })
}

/// Where the tokens of one forward pass sit: RoPE's tables for positions `offset..offset + t`
/// and, for a left-padded batch, each row's own tables [batch, t, hd / 2] and the mask over
/// its padding keys.
struct Positions {
    cos: Tensor,
    sin: Tensor,
    rows: Option<(Tensor, Tensor)>,
    key_mask: Option<Tensor>,
}

// ANCHOR: llama_layer
impl DecoderLayer {
    /// One layer on the residual stream `h` [batch, seq, d]. Each `forward` on a slot runs
    /// whatever the slot holds (a frozen linear, a LoRA layer, a custom kind).
    fn forward(
        &self,
        h: &Tensor,
        pos: &Positions,
        cache: Option<(&mut KvCache, usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let eps = self.rms_norm_eps;
        let a = rms_norm(h, self.input_layernorm.weight.tensor(), eps)?;
        let h = self.self_attn.forward_residual(h, &a, pos, cache, train)?;
        let m = rms_norm(&h, self.post_attention_layernorm.weight.tensor(), eps)?;
        self.mlp.forward_residual(&h, &m, train)
    }
}

impl Attention {
    /// `h + o_proj(attention(x))`. Without a cache, one attention op over the whole sequence
    /// in the projections' layout, RoPE inside; with one (generation), rotate, append this
    /// layer's keys and values to the cache and attend over everything cached.
    fn forward_residual(
        &self,
        h: &Tensor,
        x: &Tensor,
        pos: &Positions,
        cache: Option<(&mut KvCache, usize)>,
        train: bool,
    ) -> Result<Tensor> {
        let (nh, nkv) = (self.num_heads, self.num_kv_heads);
        let q = self.q_proj.forward(x, train)?;
        let k = self.k_proj.forward(x, train)?;
        let v = self.v_proj.forward(x, train)?;
        let y =
            match cache {
                None => self_attention(&q, &k, &v, nh, nkv, Some((&pos.cos, &pos.sin)), self.window)?,
                Some((c, layer)) => {
                    let (b, t, _) = x.dims3()?;
                    let (q, k) = (split_heads(&q, nh)?, split_heads(&k, nkv)?);
                    let (q, k) = match &pos.rows {
                        None => (rope(&q, &pos.cos, &pos.sin)?, rope(&k, &pos.cos, &pos.sin)?),
                        Some(tables) => (rope_rows(&q, tables)?, rope_rows(&k, tables)?),
                    };
                    let (k, v) = c.append(layer, k, split_heads(&v, nkv)?)?;
                    causal_attention_masked(&q, &k, &v, pos.key_mask.as_ref(), self.window)?
                        .transpose(1, 2)?
                        .reshape((b, t, ()))?
                }
            };
        self.o_proj.forward_residual(h, &y, train)
    }
}

impl Mlp {
    /// `h + down_proj(silu(gate_proj(x)) * up_proj(x))`.
    fn forward_residual(&self, h: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = swiglu(&self.gate_proj.forward(x, train)?, &self.up_proj.forward(x, train)?)?;
        self.down_proj.forward_residual(h, &g, train)
    }
}
// ANCHOR_END: llama_layer

// Loading: each module reads its weights under its own name.

impl DecoderLayer {
    fn load(w: &Weights, p: &str, config: &LlamaConfig, layer: usize) -> Result<Self> {
        let d = config.hidden_size;
        Ok(DecoderLayer {
            input_layernorm: rms_norm_weight(w, &format!("{p}.input_layernorm"), d)?,
            self_attn: Attention::load(w, &format!("{p}.self_attn"), config, layer)?,
            post_attention_layernorm: rms_norm_weight(w, &format!("{p}.post_attention_layernorm"), d)?,
            mlp: Mlp::load(w, &format!("{p}.mlp"), config)?,
            rms_norm_eps: config.rms_norm_eps,
        })
    }
}

impl Attention {
    fn load(w: &Weights, p: &str, config: &LlamaConfig, layer: usize) -> Result<Self> {
        let family = config.family()?;
        let (d, hd) = (config.hidden_size, config.head_dim());
        let (q_out, kv_out) = (config.num_attention_heads * hd, config.kv_heads() * hd);
        let bias = |j| family.attention_bias(j, config.attention_bias);
        Ok(Attention {
            q_proj: linear(w, &format!("{p}.q_proj"), q_out, d, bias(0))?,
            k_proj: linear(w, &format!("{p}.k_proj"), kv_out, d, bias(1))?,
            v_proj: linear(w, &format!("{p}.v_proj"), kv_out, d, bias(2))?,
            o_proj: linear(w, &format!("{p}.o_proj"), d, q_out, bias(3))?,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.kv_heads(),
            window: config.window(layer)?,
        })
    }
}

impl Mlp {
    fn load(w: &Weights, p: &str, config: &LlamaConfig) -> Result<Self> {
        let (d, m) = (config.hidden_size, config.intermediate_size);
        let bias = config.family()?.mlp_bias(config.mlp_bias);
        Ok(Mlp {
            gate_proj: linear(w, &format!("{p}.gate_proj"), m, d, bias)?,
            up_proj: linear(w, &format!("{p}.up_proj"), m, d, bias)?,
            down_proj: linear(w, &format!("{p}.down_proj"), d, m, bias)?,
        })
    }
}

impl Llama {
    /// The embedding table [vocab, d], dequantized if it is kept quantized (a transient copy,
    /// dropped after the op that reads it).
    fn embedding_table(&self) -> Result<Tensor> {
        let table = self.model.embed_tokens.weight.tensor();
        match &self.embed_quantized {
            Some(q) => Ok(q.dequantize(&self.device)?.to_dtype(table.dtype())?),
            None => Ok(table.clone()),
        }
    }

    /// Build the model from its config and weights; every weight starts frozen.
    pub fn new(config: LlamaConfig, w: &Weights, name_or_path: &str) -> Result<Self> {
        config.validate()?;
        let (d, hd) = (config.hidden_size, config.head_dim());
        let embed = w.get(EMBED, &[config.vocab_size, d])?;
        let device = embed.device().clone();
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(w, &format!("model.layers.{i}"), &config, i))
            .collect::<Result<Vec<_>>>()?;
        // A tied checkpoint may still list `lm_head.weight` (a copy of the embeddings); untied
        // ones must.
        let lm_head =
            if config.tie_word_embeddings { None } else { Some(linear(w, "lm_head", config.vocab_size, d, false)?) };
        let inv_freq: Vec<f32> =
            (0..hd / 2).map(|i| (1.0 / config.rope_theta().powf(2.0 * i as f64 / hd as f64)) as f32).collect();
        Ok(Llama {
            inv_freq: Tensor::new(inv_freq, &device)?,
            model: LlamaModel {
                embed_tokens: Embedding { weight: Param::frozen(&embed) },
                layers,
                norm: rms_norm_weight(w, "model.norm", d)?,
            },
            embed_quantized: None,
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

    /// cos and sin [seq, head_dim / 2] for the positions `pos` [seq] (u32), in `dtype`.
    fn rope_tables_at(&self, pos: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = pos.to_dtype(DType::F32)?;
        let freqs = pos.unsqueeze(1)?.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }

    /// The [`Positions`] of `t` new tokens in each of `b` rows after the cached ones.
    fn positions(&self, cache: Option<&KvCache>, b: usize, t: usize, dtype: DType) -> Result<Positions> {
        let offset = cache.map_or(0, |c| c.len());
        let pos = Tensor::arange(offset as u32, (offset + t) as u32, &self.device)?;
        let (cos, sin) = self.rope_tables_at(&pos, dtype)?;
        let mut positions = Positions { cos, sin, rows: None, key_mask: None };
        // A left-padded batch: each row's own positions and a mask over the padding keys.
        if let Some(c) = cache {
            if let Some(rows) = c.row_positions(b, t)? {
                // [batch * t] positions -> tables [batch, t, hd / 2].
                let (cos, sin) = self.rope_tables_at(&Tensor::new(rows.concat(), &self.device)?, dtype)?;
                positions.rows = Some((cos.reshape((b, t, ()))?, sin.reshape((b, t, ()))?));
                positions.key_mask = c.key_mask(offset + t, dtype, &self.device)?;
            }
        }
        Ok(positions)
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
        let mut h = embedding(ids, &self.embedding_table()?)?;
        let pos = self.positions(cache.as_deref(), b, t, h.dtype())?;
        for (i, layer) in self.model.layers.iter().enumerate() {
            h = layer.forward(&h, &pos, cache.as_deref_mut().map(|c| (c, i)), train)?;
        }
        rms_norm(&h, self.model.norm.weight.tensor(), self.config.rms_norm_eps)
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
    lora_model_accessors!();

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
        let table = &mut self.model.embed_tokens.weight;
        let dims = table.tensor().dims2()?;
        if weight.dims() != dims {
            return Err(LoraError::shape(
                "quantized embedding table",
                format!("[{}, {}]", dims.0, dims.1),
                &[weight.dims().0, weight.dims().1],
            ));
        }
        let stand_in = Tensor::zeros((), table.tensor().dtype(), &self.device)?.broadcast_as(dims)?;
        *table = Param::frozen(&stand_in);
        self.embed_quantized = Some(weight);
        Ok(true)
    }

    fn name_or_path(&self) -> String {
        self.name_or_path.clone()
    }
}
