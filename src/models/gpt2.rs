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

use super::weights::Weights;
use super::{check_ids, plain_weights, CausalLm, KvCache};
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

/// The slices of `c_attn`, in the order the fused weight stacks them.
const QKV: [&str; 3] = ["q", "k", "v"];

/// `c_attn` as loaded, or split into its q, k and v slices.
#[derive(Clone, Debug)]
enum CAttn {
    Fused(LinearSlot),
    Split([LinearSlot; 3]),
}

#[derive(Clone, Debug)]
struct Block {
    ln_1: (Param, Param),
    c_attn: CAttn,
    attn_proj: LinearSlot,
    ln_2: (Param, Param),
    c_fc: LinearSlot,
    mlp_proj: LinearSlot,
}

/// GPT-2 with a slot for an adapter on every linear layer.
#[derive(Clone, Debug)]
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Param,
    wpe: Param,
    blocks: Vec<Block>,
    ln_f: (Param, Param),
    name_or_path: String,
    device: Device,
}

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

/// A Conv1D layer read as an [out, in] linear: weight stored [in, out], transposed once here.
fn conv1d(w: &Weights, name: &str, inp: usize, out: usize) -> Result<(Tensor, Tensor)> {
    let weight = get(w, &format!("{name}.weight"), &[inp, out])?.t()?.contiguous()?;
    let bias = get(w, &format!("{name}.bias"), &[out])?;
    Ok((weight, bias))
}

fn frozen(weight: &Tensor, bias: &Tensor) -> Result<LinearSlot> {
    Ok(LinearSlot::Linear(Linear::frozen(weight, Some(bias))?))
}

fn norm(w: &Weights, name: &str, d: usize) -> Result<(Param, Param)> {
    Ok((
        Param::frozen(&get(w, &format!("{name}.weight"), &[d])?),
        Param::frozen(&get(w, &format!("{name}.bias"), &[d])?),
    ))
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
        let inner = config.n_inner.unwrap_or(4 * d);
        let wte = get(w, "wte.weight", &[config.vocab_size, d])?;
        let device = wte.device().clone();
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            let (qkv_w, qkv_b) = conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d)?;
            let (proj_w, proj_b) = conv1d(w, &format!("{p}.attn.c_proj"), d, d)?;
            let (fc_w, fc_b) = conv1d(w, &format!("{p}.mlp.c_fc"), d, inner)?;
            let (mp_w, mp_b) = conv1d(w, &format!("{p}.mlp.c_proj"), inner, d)?;
            blocks.push(Block {
                ln_1: norm(w, &format!("{p}.ln_1"), d)?,
                c_attn: CAttn::Fused(frozen(&qkv_w, &qkv_b)?),
                attn_proj: frozen(&proj_w, &proj_b)?,
                ln_2: norm(w, &format!("{p}.ln_2"), d)?,
                c_fc: frozen(&fc_w, &fc_b)?,
                mlp_proj: frozen(&mp_w, &mp_b)?,
            });
        }
        Ok(Gpt2 {
            wpe: Param::frozen(&get(w, "wpe.weight", &[config.n_positions, d])?),
            wte: Param::frozen(&wte),
            ln_f: norm(w, "ln_f", d)?,
            blocks,
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
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let CAttn::Fused(slot) = &block.c_attn else { continue };
            if slot.adapter().is_some() {
                return Err(LoraError::module(
                    format!("transformer.h.{i}.attn.c_attn"),
                    "has a LoRA adapter; split q, k, v before injecting adapters",
                ));
            }
            let (w, b) = (slot.base_weight()?, slot.base_bias().expect("c_attn has a bias"));
            let slice = |j: usize| frozen(&w.narrow(0, j * d, d)?.contiguous()?, &b.narrow(0, j * d, d)?);
            block.c_attn = CAttn::Split([slice(0)?, slice(1)?, slice(2)?]);
        }
        Ok(())
    }

    fn ln(&self, x: &Tensor, (w, b): &(Param, Param)) -> Result<Tensor> {
        layer_norm(x, w.tensor(), b.tensor(), self.config.layer_norm_epsilon)
    }

    /// [batch, seq, d] -> [batch, heads, seq, head_dim]
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let h = self.config.n_head;
        Ok(x.reshape((b, t, h, d / h))?.transpose(1, 2)?.contiguous()?)
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
        let mut h = embedding(ids, self.wte.tensor())?.broadcast_add(&embedding(&positions, self.wpe.tensor())?)?;
        let key_mask = match cache.as_deref() {
            Some(c) => c.key_mask(offset + t, h.dtype(), &self.device)?,
            None => None,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let a = self.ln(&h, &block.ln_1)?;
            let d = self.config.n_embd;
            let (q, k, v) = match &block.c_attn {
                CAttn::Fused(qkv) => {
                    let y = qkv.forward(&a, train)?;
                    (y.narrow(2, 0, d)?, y.narrow(2, d, d)?, y.narrow(2, 2 * d, d)?)
                }
                CAttn::Split([q, k, v]) => (q.forward(&a, train)?, k.forward(&a, train)?, v.forward(&a, train)?),
            };
            let nh = self.config.n_head;
            let y = match cache.as_deref_mut() {
                // A whole sequence: one attention op in the projections' layout.
                None => self_attention(&q, &k, &v, nh, nh, None, None)?,
                Some(c) => {
                    let (q, k, v) = (self.heads(&q)?, self.heads(&k)?, self.heads(&v)?);
                    let (k, v) = c.append(i, k, v)?;
                    causal_attention_masked(&q, &k, &v, key_mask.as_ref(), None)?.transpose(1, 2)?.reshape((
                        b,
                        t,
                        self.config.n_embd,
                    ))?
                }
            };
            h = block.attn_proj.forward_residual(&h, &y, train)?;
            let m = self.ln(&h, &block.ln_2)?;
            h = block.mlp_proj.forward_residual(&h, &gelu_new(&block.c_fc.forward(&m, train)?)?, train)?;
        }
        self.ln(&h, &self.ln_f)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        // The head is `wte` itself (tied weights).
        linear_forward(hidden, self.wte.tensor(), None)
    }

    fn head_weight(&self) -> Result<Option<Tensor>> {
        Ok(Some(self.wte.tensor().clone()))
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
    fn linears(&self) -> Vec<(String, &LinearSlot)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            match &b.c_attn {
                CAttn::Fused(slot) => out.push((format!("transformer.h.{i}.attn.c_attn"), slot)),
                CAttn::Split(slots) => {
                    for (part, slot) in QKV.iter().zip(slots) {
                        out.push((format!("transformer.h.{i}.attn.c_attn.{part}"), slot));
                    }
                }
            }
            out.push((format!("transformer.h.{i}.attn.c_proj"), &b.attn_proj));
            out.push((format!("transformer.h.{i}.mlp.c_fc"), &b.c_fc));
            out.push((format!("transformer.h.{i}.mlp.c_proj"), &b.mlp_proj));
        }
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut LinearSlot)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            match &mut b.c_attn {
                CAttn::Fused(slot) => out.push((format!("transformer.h.{i}.attn.c_attn"), slot)),
                CAttn::Split(slots) => {
                    for (part, slot) in QKV.iter().zip(slots.iter_mut()) {
                        out.push((format!("transformer.h.{i}.attn.c_attn.{part}"), slot));
                    }
                }
            }
            out.push((format!("transformer.h.{i}.attn.c_proj"), &mut b.attn_proj));
            out.push((format!("transformer.h.{i}.mlp.c_fc"), &mut b.c_fc));
            out.push((format!("transformer.h.{i}.mlp.c_proj"), &mut b.mlp_proj));
        }
        out
    }

    fn params(&self) -> Vec<(String, &Param)> {
        let mut out =
            vec![("transformer.wte.weight".to_string(), &self.wte), ("transformer.wpe.weight".into(), &self.wpe)];
        for (i, b) in self.blocks.iter().enumerate() {
            for (n, (w, bias)) in [("ln_1", &b.ln_1), ("ln_2", &b.ln_2)] {
                out.push((format!("transformer.h.{i}.{n}.weight"), w));
                out.push((format!("transformer.h.{i}.{n}.bias"), bias));
            }
        }
        out.push(("transformer.ln_f.weight".into(), &self.ln_f.0));
        out.push(("transformer.ln_f.bias".into(), &self.ln_f.1));
        out
    }

    fn params_mut(&mut self) -> Vec<(String, &mut Param)> {
        let mut out = vec![
            ("transformer.wte.weight".to_string(), &mut self.wte),
            ("transformer.wpe.weight".into(), &mut self.wpe),
        ];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (n, (w, bias)) in [("ln_1", &mut b.ln_1), ("ln_2", &mut b.ln_2)] {
                out.push((format!("transformer.h.{i}.{n}.weight"), w));
                out.push((format!("transformer.h.{i}.{n}.bias"), bias));
            }
        }
        out.push(("transformer.ln_f.weight".into(), &mut self.ln_f.0));
        out.push(("transformer.ln_f.bias".into(), &mut self.ln_f.1));
        out
    }

    fn name_or_path(&self) -> String {
        self.name_or_path.clone()
    }

    fn conv1d_layout(&self) -> bool {
        true
    }
}
