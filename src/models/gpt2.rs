//! GPT-2 (Radford et al. 2019) named as Hugging Face's `GPT2LMHeadModel`, written for training.
//!
//! Module names: `transformer.wte`, `transformer.wpe`, `transformer.h.N.{ln_1, attn.c_attn,
//! attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `transformer.ln_f`; the head is tied to `wte`.
//! GPT-2 stores its linears as `Conv1D`, weight [in, out]; we transpose them once at load so every
//! linear is [out, in] like `nn.Linear`.
//!
//! `c_attn` computes q, k and v in one [3 * d, d] matmul. As loaded it is one linear layer named
//! `attn.c_attn`, so the target `"c_attn"` adapts it exactly as PEFT does (one A [r, d], one
//! B [3d, r]). The LoRA paper adapts only some of q, k, v (q and v on GPT-2), which loralib does
//! with `MergedLinear(enable_lora=[True, False, True])`: [`Gpt2::split_qkv`] (or
//! `LoadOptions::split_qkv`) splits the fused weight into three linears, `attn.c_attn.q`,
//! `attn.c_attn.k` and `attn.c_attn.v`, each a target of its own. The output does not change.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::table::{lora_model_accessors, modules, Embedding, Found, FoundMut, LayerNorm, Modules};
use super::weights::Weights;
use super::{check_ids, plain_weights, CausalLm, KvCache};
use crate::compute::ops::composed::split_heads;
use crate::compute::ops::linear_forward;
use crate::compute::ops::{causal_attention_masked, embedding, gelu_new, layer_norm, self_attention};
use crate::error::{LoraError, Result};
use crate::lora::linear::Linear;
use crate::lora::model::LoraModel;
use crate::lora::param::Param;
use crate::lora::slot::LinearSlot;

/// The fields of GPT-2's `config.json` this model reads.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    /// Number of learned positions: the longest sequence.
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// MLP width; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

/// `c_attn` as loaded, or split into its q, k and v slices.
#[derive(Clone, Debug)]
enum CAttn {
    Fused(LinearSlot),
    Split(QkvSlices),
}

/// The slices of `c_attn`, in the order the fused weight stacks them.
#[derive(Clone, Debug)]
struct QkvSlices {
    q: LinearSlot,
    k: LinearSlot,
    v: LinearSlot,
}
modules!(QkvSlices { q, k, v });

/// The fused layer is `attn.c_attn`; its slices `attn.c_attn.q`, `.k`, `.v`.
impl Modules for CAttn {
    fn visit<'a>(&'a self, path: &str, found: &mut Found<'a>) {
        match self {
            CAttn::Fused(slot) => slot.visit(path, found),
            CAttn::Split(slices) => slices.visit(path, found),
        }
    }

    fn visit_mut<'a>(&'a mut self, path: &str, found: &mut FoundMut<'a>) {
        match self {
            CAttn::Fused(slot) => slot.visit_mut(path, found),
            CAttn::Split(slices) => slices.visit_mut(path, found),
        }
    }
}

/// `GPT2Attention`: the fused (or split) q, k, v projection and the output projection.
#[derive(Clone, Debug)]
struct Attention {
    c_attn: CAttn,
    c_proj: LinearSlot,
    n_head: usize,
}
modules!(Attention { c_attn, c_proj });

/// `GPT2MLP`: widen, `gelu_new`, project back.
#[derive(Clone, Debug)]
struct Mlp {
    c_fc: LinearSlot,
    c_proj: LinearSlot,
}
modules!(Mlp { c_fc, c_proj });

/// `GPT2Block`: pre-norm attention, then a pre-norm MLP, each added to the residual.
#[derive(Clone, Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
    layer_norm_epsilon: f64,
}
modules!(Block { ln_1, attn, ln_2, mlp });

/// `GPT2Model`: token and position embeddings, the blocks and the final norm, under
/// `transformer.`.
#[derive(Clone, Debug)]
struct Gpt2Model {
    wte: Embedding,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
}
modules!(Gpt2Model { wte, wpe, h, ln_f });

/// GPT-2 with a slot for an adapter on every linear layer.
#[derive(Clone, Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    transformer: Gpt2Model,
    name_or_path: String,
    device: Device,
}
modules!(Gpt2 { transformer });

/// Checkpoints saved from `GPT2LMHeadModel` prefix every name with `transformer.`; the original
/// `openai-community/gpt2` files (saved from `GPT2Model`) do not. Accept both.
fn get(w: &Weights, name: &str, shape: &[usize]) -> Result<Tensor> {
    let full = format!("transformer.{name}");
    if w.contains(&full) {
        w.get(&full, shape)
    } else if w.contains(name) {
        w.get(name, shape)
    } else {
        w.get(&full, shape)
    }
}

/// A Conv1D layer read as a frozen [out, in] linear: weight stored [in, out], transposed once
/// here.
fn conv1d(w: &Weights, name: &str, inp: usize, out: usize) -> Result<LinearSlot> {
    let weight = get(w, &format!("{name}.weight"), &[inp, out])?.t()?.contiguous()?;
    let bias = get(w, &format!("{name}.bias"), &[out])?;
    frozen(&weight, &bias)
}

fn frozen(weight: &Tensor, bias: &Tensor) -> Result<LinearSlot> {
    Ok(LinearSlot::Linear(Linear::frozen(weight, Some(bias))?))
}

fn layer_norm_weights(w: &Weights, name: &str, d: usize) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: Param::frozen(&get(w, &format!("{name}.weight"), &[d])?),
        bias: Param::frozen(&get(w, &format!("{name}.bias"), &[d])?),
    })
}

fn embedding_weights(w: &Weights, name: &str, rows: usize, d: usize) -> Result<Embedding> {
    Ok(Embedding { weight: Param::frozen(&get(w, &format!("{name}.weight"), &[rows, d])?) })
}

impl Attention {
    /// `h + c_proj(attention(x))`. Without a cache, one attention op over the whole sequence in
    /// the projections' layout; with one (generation), append this layer's keys and values to
    /// the cache and attend over everything cached, padding keys masked by `key_mask`.
    fn forward_residual(
        &self,
        h: &Tensor,
        x: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        key_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let nh = self.n_head;
        let (q, k, v) = match &self.c_attn {
            CAttn::Fused(qkv) => {
                let y = qkv.forward(x, train)?;
                (y.narrow(2, 0, d)?, y.narrow(2, d, d)?, y.narrow(2, 2 * d, d)?)
            }
            CAttn::Split(s) => (s.q.forward(x, train)?, s.k.forward(x, train)?, s.v.forward(x, train)?),
        };
        let y = match cache {
            None => self_attention(&q, &k, &v, nh, nh, None, None)?,
            Some((c, layer)) => {
                let (q, k, v) = (split_heads(&q, nh)?, split_heads(&k, nh)?, split_heads(&v, nh)?);
                let (k, v) = c.append(layer, k, v)?;
                causal_attention_masked(&q, &k, &v, key_mask, None)?.transpose(1, 2)?.reshape((b, t, d))?
            }
        };
        self.c_proj.forward_residual(h, &y, train)
    }
}

impl Mlp {
    /// `h + c_proj(gelu_new(c_fc(x)))`.
    fn forward_residual(&self, h: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        self.c_proj.forward_residual(h, &gelu_new(&self.c_fc.forward(x, train)?)?, train)
    }
}

impl Block {
    fn load(w: &Weights, p: &str, config: &Gpt2Config) -> Result<Self> {
        let d = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * d);
        Ok(Block {
            ln_1: layer_norm_weights(w, &format!("{p}.ln_1"), d)?,
            attn: Attention {
                c_attn: CAttn::Fused(conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d)?),
                c_proj: conv1d(w, &format!("{p}.attn.c_proj"), d, d)?,
                n_head: config.n_head,
            },
            ln_2: layer_norm_weights(w, &format!("{p}.ln_2"), d)?,
            mlp: Mlp {
                c_fc: conv1d(w, &format!("{p}.mlp.c_fc"), d, inner)?,
                c_proj: conv1d(w, &format!("{p}.mlp.c_proj"), inner, d)?,
            },
            layer_norm_epsilon: config.layer_norm_epsilon,
        })
    }

    fn forward(
        &self,
        h: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        key_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let a = layer_norm_forward(h, &self.ln_1, self.layer_norm_epsilon)?;
        let h = self.attn.forward_residual(h, &a, cache, key_mask, train)?;
        let m = layer_norm_forward(&h, &self.ln_2, self.layer_norm_epsilon)?;
        self.mlp.forward_residual(&h, &m, train)
    }
}

fn layer_norm_forward(x: &Tensor, ln: &LayerNorm, eps: f64) -> Result<Tensor> {
    layer_norm(x, ln.weight.tensor(), ln.bias.tensor(), eps)
}

impl Gpt2 {
    /// Build the model from its config and weights; every weight starts frozen.
    pub fn new(config: Gpt2Config, w: &Weights, name_or_path: &str) -> Result<Self> {
        if config.activation_function != "gelu_new" {
            return Err(LoraError::config(
                "GPT-2 activation_function",
                format!("is `{}`, only `gelu_new` is implemented", config.activation_function),
            ));
        }
        if !config.n_embd.is_multiple_of(config.n_head) {
            return Err(LoraError::config("GPT-2 config", "n_embd must be a multiple of n_head"));
        }
        let d = config.n_embd;
        let wte = embedding_weights(w, "wte", config.vocab_size, d)?;
        let device = wte.weight.tensor().device().clone();
        let h = (0..config.n_layer).map(|i| Block::load(w, &format!("h.{i}"), &config)).collect::<Result<Vec<_>>>()?;
        Ok(Gpt2 {
            transformer: Gpt2Model {
                wpe: embedding_weights(w, "wpe", config.n_positions, d)?,
                wte,
                h,
                ln_f: layer_norm_weights(w, "ln_f", d)?,
            },
            config,
            name_or_path: name_or_path.to_string(),
            device,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Split every block's fused `c_attn` into three linears `c_attn.q`, `c_attn.k`, `c_attn.v`,
    /// so that each can be a LoRA target. Must come before `inject_lora` on `c_attn`: a fused
    /// layer that already has an adapter is an error.
    pub fn split_qkv(&mut self) -> Result<()> {
        let d = self.config.n_embd;
        for (i, block) in self.transformer.h.iter_mut().enumerate() {
            let CAttn::Fused(slot) = &block.attn.c_attn else { continue };
            if slot.adapter().is_some() {
                return Err(LoraError::module(
                    format!("transformer.h.{i}.attn.c_attn"),
                    "has a LoRA adapter; split q, k, v before injecting adapters",
                ));
            }
            let (w, b) = (slot.base_weight()?, slot.base_bias().expect("c_attn has a bias"));
            let slice = |j: usize| frozen(&w.narrow(0, j * d, d)?.contiguous()?, &b.narrow(0, j * d, d)?);
            block.attn.c_attn = CAttn::Split(QkvSlices { q: slice(0)?, k: slice(1)?, v: slice(2)? });
        }
        Ok(())
    }
}

impl CausalLm for Gpt2 {
    fn forward_hidden(&self, ids: &Tensor, mut cache: Option<&mut KvCache>, train: bool) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (b, t) = check_ids(ids, self.config.vocab_size, offset, Some(self.config.n_positions))?;
        // A left-padded batch gives each row its own positions and masks the padding keys.
        let row_positions = match cache.as_deref() {
            Some(c) => c.row_positions(b, t)?,
            None => None,
        };
        let positions = match row_positions {
            Some(rows) => Tensor::new(rows, &self.device)?,
            None => Tensor::arange(offset as u32, (offset + t) as u32, &self.device)?.unsqueeze(0)?,
        };
        let model = &self.transformer;
        let mut h = embedding(ids, model.wte.weight.tensor())?
            .broadcast_add(&embedding(&positions, model.wpe.weight.tensor())?)?;
        let key_mask = match cache.as_deref() {
            Some(c) => c.key_mask(offset + t, h.dtype(), &self.device)?,
            None => None,
        };
        for (i, block) in model.h.iter().enumerate() {
            h = block.forward(&h, cache.as_deref_mut().map(|c| (c, i)), key_mask.as_ref(), train)?;
        }
        layer_norm_forward(&h, &model.ln_f, self.config.layer_norm_epsilon)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        // The head is `wte` itself (tied weights).
        linear_forward(hidden, self.transformer.wte.weight.tensor(), None)
    }

    fn head_weight(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.transformer.wte.weight.tensor().clone()))
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layer)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.n_positions)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn hf_config(&self) -> serde_json::Value {
        let mut c = serde_json::to_value(&self.config).expect("the config serializes");
        c["model_type"] = "gpt2".into();
        c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        c["tie_word_embeddings"] = true.into();
        c
    }

    fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = self.params().into_iter().map(|(n, p)| (n, p.tensor().clone())).collect();
        // Linears go back to Conv1D's [in, out]; split q, k, v are fused again.
        let mut qkv: Vec<(Tensor, Tensor)> = Vec::new();
        for (name, slot) in self.linears() {
            let (w, b) = plain_weights(&name, slot)?;
            let b = b.expect("every GPT-2 linear has a bias");
            if let Some(fused) = name.strip_suffix(".q").or(name.strip_suffix(".k")).or(name.strip_suffix(".v")) {
                qkv.push((w, b));
                if qkv.len() == 3 {
                    let (ws, bs): (Vec<Tensor>, Vec<Tensor>) = qkv.drain(..).unzip();
                    out.push((format!("{fused}.weight"), Tensor::cat(&ws, 0)?.t()?.contiguous()?));
                    out.push((format!("{fused}.bias"), Tensor::cat(&bs, 0)?));
                }
                continue;
            }
            out.push((format!("{name}.weight"), w.t()?.contiguous()?));
            out.push((format!("{name}.bias"), b));
        }
        Ok(out)
    }
}

impl LoraModel for Gpt2 {
    lora_model_accessors!();

    fn name_or_path(&self) -> String {
        self.name_or_path.clone()
    }

    fn conv1d_layout(&self) -> bool {
        true
    }
}
