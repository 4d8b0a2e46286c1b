//! `TinyLm`: a small language-model-shaped network for the graders and the quickstart.
//!
//! Its module tree is named like a Hugging Face Llama (`model.embed_tokens`,
//! `model.layers.N.self_attn.{q,k,v,o}_proj`, `model.layers.N.mlp.{gate,up,down}_proj`,
//! `model.norm`, `lm_head`), so target matching behaves as on the real thing. Attention is
//! replaced by a gated mix of the same projections: the point is the names and shapes, and that
//! every op has a backward, not language modelling. Weights are seeded random numbers.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::table::{lora_model_accessors, modules, Embedding, RmsNorm};
use crate::error::{LoraError, Result};
use crate::lora::linear::Linear;
use crate::lora::model::LoraModel;
use crate::lora::param::Param;
use crate::lora::slot::LinearSlot;

/// Sizes of a [`TinyLm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TinyConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    /// Give the attention projections a bias (as GPT-2 and Qwen have), to exercise bias handling.
    pub attention_bias: bool,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig { vocab_size: 32, hidden_size: 16, intermediate_size: 24, num_layers: 2, attention_bias: true }
    }
}

/// Four projections named like Llama's attention, mixed by a gate instead of softmax.
#[derive(Clone, Debug)]
struct Attention {
    q_proj: LinearSlot,
    k_proj: LinearSlot,
    v_proj: LinearSlot,
    o_proj: LinearSlot,
}
modules!(Attention { q_proj, k_proj, v_proj, o_proj });

/// A gated MLP named like Llama's.
#[derive(Clone, Debug)]
struct Mlp {
    gate_proj: LinearSlot,
    up_proj: LinearSlot,
    down_proj: LinearSlot,
}
modules!(Mlp { gate_proj, up_proj, down_proj });

/// One block: the attention-named projections and the gated MLP.
#[derive(Clone, Debug)]
struct Block {
    self_attn: Attention,
    mlp: Mlp,
}
modules!(Block { self_attn, mlp });

/// The body under `model.`: embeddings, blocks, and a final scale named like an RMSNorm.
#[derive(Clone, Debug)]
struct TinyModel {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
}
modules!(TinyModel { embed_tokens, layers, norm });

/// The graders' test model.
#[derive(Clone, Debug)]
pub struct TinyLm {
    config: TinyConfig,
    model: TinyModel,
    lm_head: LinearSlot,
}
modules!(TinyLm { model, lm_head });

/// A frozen [out, in] weight with entries N(0, 1/in), so activations keep unit scale.
fn random_linear(rng: &mut StdRng, out: usize, inp: usize, bias: bool, device: &Device) -> Result<LinearSlot> {
    let w = random_tensor(rng, &[out, inp], 1.0 / (inp as f32).sqrt(), device)?;
    let b = if bias { Some(random_tensor(rng, &[out], 0.1, device)?) } else { None };
    Ok(LinearSlot::Linear(Linear::frozen(&w, b.as_ref())?))
}

fn random_tensor(rng: &mut StdRng, shape: &[usize], std: f32, device: &Device) -> Result<Tensor> {
    let normal = Normal::new(0.0f32, std).map_err(|e| LoraError::config("std", e.to_string()))?;
    let n = shape.iter().product();
    Ok(Tensor::from_vec(normal.sample_iter(rng).take(n).collect::<Vec<_>>(), shape, device)?)
}

impl TinyLm {
    /// A model with seeded random weights, all frozen (call `Param::unfreeze` for full
    /// fine-tuning).
    pub fn new(config: TinyConfig, seed: u64, device: &Device) -> Result<Self> {
        let TinyConfig { vocab_size: v, hidden_size: h, intermediate_size: m, .. } = config;
        let rng = &mut StdRng::seed_from_u64(seed);
        let mut layers = Vec::new();
        for _ in 0..config.num_layers {
            let b = config.attention_bias;
            let self_attn = Attention {
                q_proj: random_linear(rng, h, h, b, device)?,
                k_proj: random_linear(rng, h, h, b, device)?,
                v_proj: random_linear(rng, h, h, b, device)?,
                o_proj: random_linear(rng, h, h, false, device)?,
            };
            let mlp = Mlp {
                gate_proj: random_linear(rng, m, h, false, device)?,
                up_proj: random_linear(rng, m, h, false, device)?,
                down_proj: random_linear(rng, h, m, false, device)?,
            };
            layers.push(Block { self_attn, mlp });
        }
        let embed_tokens = Embedding { weight: Param::frozen(&random_tensor(rng, &[v, h], 1.0, device)?) };
        let norm = RmsNorm { weight: Param::frozen(&(random_tensor(rng, &[h], 0.1, device)? + 1.0)?) };
        Ok(TinyLm {
            config,
            model: TinyModel { embed_tokens, layers, norm },
            lm_head: random_linear(rng, v, h, false, device)?,
        })
    }

    /// The sizes this model was built with.
    pub fn config(&self) -> TinyConfig {
        self.config
    }

    /// Logits [batch, seq, vocab] for token ids [batch, seq]; `train` enables adapter dropout.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let (b, s) = ids.dims2().map_err(|_| LoraError::shape("token ids", "[batch, seq]", ids.dims()))?;
        let h = self.config.hidden_size;
        let model = &self.model;
        let mut x = model.embed_tokens.weight.tensor().index_select(&ids.flatten_all()?, 0)?.reshape((b, s, h))?;
        for block in &model.layers {
            let Attention { q_proj, k_proj, v_proj, o_proj } = &block.self_attn;
            // A gate instead of softmax attention: every op here has a backward in candle.
            let mixed =
                ((q_proj.forward(&x, train)? * k_proj.forward(&x, train)?.tanh()?)? + v_proj.forward(&x, train)?)?;
            x = (&x + o_proj.forward(&mixed, train)?)?;
            let Mlp { gate_proj, up_proj, down_proj } = &block.mlp;
            let inner = (gate_proj.forward(&x, train)?.tanh()? * up_proj.forward(&x, train)?)?;
            x = (&x + down_proj.forward(&inner, train)?)?;
        }
        let x = x.broadcast_mul(model.norm.weight.tensor())?;
        self.lm_head.forward(&x, train)
    }

    /// A scalar loss for tests: mean squared logits. Cheap, and every weight influences it.
    pub fn loss(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward(ids, train)?.to_dtype(DType::F32)?.sqr()?.mean_all()?)
    }
}

impl LoraModel for TinyLm {
    lora_model_accessors!();

    fn output_head(&self) -> Option<&str> {
        Some("lm_head")
    }

    fn name_or_path(&self) -> String {
        "lora-from-scratch/tiny-test-lm".into()
    }
}
