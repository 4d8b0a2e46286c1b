//! Task 1.1: `LoraLayer`, the low-rank update itself.
//!
//! Hu et al. 2021 (arXiv 2106.09685), eq. 3: for a frozen weight W0 [out, in],
//! `h = W0 x + (alpha / r) * B A x` with A [r, in] and B [out, r], r << min(in, out).
//! Read book/src/t01_lora_layer.md beside this file. Grade it with
//! `cargo test --features exercises --test t01_lora_layer`.
#![allow(unused_variables, unused_imports)]

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{LoraError, Result};

use crate::lora::config::{LoraConfig, LoraInit};

use crate::lora::param::Param;

/// The factor in front of `B A`: alpha / r, or alpha / sqrt(r) with rsLoRA.
pub fn lora_scaling(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    // TODO: alpha / r, or alpha / sqrt(r) when `use_rslora` is set.
    // Book: "Why alpha / r" in t01_lora_layer.md.
    todo!("t01: lora_scaling")
}

/// The adapter of one linear layer: A [r, in], B [out, r] and the scaling.
///
/// Not PEFT's class of the same name: PEFT's `LoraLayer` is the base layer's mixin that holds
/// its adapters by name (closer to t02's `LinearWithLora`); this is one adapter, what PEFT keeps
/// as `lora_A[name]`, `lora_B[name]` and `scaling[name]`.
#[derive(Clone, Debug)]
pub struct LoraLayer {
    a: Param,
    b: Param,
    scaling: f64,
    dropout: f32,
}

impl LoraLayer {
    /// A fresh adapter for a layer with `in_features` inputs and `out_features` outputs:
    /// A drawn from `rng` as `config.init` says, B zeros, both trainable.
    pub fn new(
        in_features: usize,
        out_features: usize,
        config: &LoraConfig,
        rng: &mut StdRng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // TODO: a fresh adapter for a layer with `in_features` inputs and `out_features` outputs.
        // An invalid config (r = 0, ...) is an error. A [r, in_features] is drawn from `rng` and
        // nothing else (the same seed gives the same A), as `config.init` says:
        // LoraInit::KaimingUniform is uniform on [-1/sqrt(in), 1/sqrt(in)] (what PEFT's
        // kaiming_uniform_(A, a = sqrt(5)) works out to), LoraInit::Gaussian is normal with mean 0
        // and std 1/r. B [out_features, r] is all zeros, so that B A = 0 at the start. Both
        // trainable, in `dtype` on `device`.
        // Book: "How A starts", "Why B starts at zero".
        todo!("t01: LoraLayer::new")
    }

    /// An adapter with the given A [r, in] and B [out, r] (copied into trainable `Var`s), for
    /// loading a saved adapter. The rank is taken from A and must equal `config.r`.
    pub fn from_tensors(a: &Tensor, b: &Tensor, config: &LoraConfig) -> Result<Self> {
        // TODO: a layer holding A and B as trainable `Var`s, with the scaling and dropout of
        // `config`. An invalid config is an error; an A that is not 2-D with config.r rows, or a B
        // that is not 2-D with config.r columns, is a `LoraError::shape` error naming "lora_A" or
        // "lora_B".
        // Book: "Shapes".
        todo!("t01: LoraLayer::from_tensors")
    }

    /// A [r, in].
    pub fn a(&self) -> &Param {
        &self.a
    }

    /// B [out, r].
    pub fn b(&self) -> &Param {
        &self.b
    }

    /// A and B, mutably (to freeze or unfreeze them).
    pub fn params_mut(&mut self) -> [&mut Param; 2] {
        [&mut self.a, &mut self.b]
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.a.tensor().dims()[0]
    }

    /// Number of input features.
    pub fn in_features(&self) -> usize {
        self.a.tensor().dims()[1]
    }

    /// Number of output features.
    pub fn out_features(&self) -> usize {
        self.b.tensor().dims()[0]
    }

    /// The factor in front of `B A`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// The dropout probability applied to the adapter's input in training.
    pub fn dropout(&self) -> f32 {
        self.dropout
    }

    /// `scaling * B A dropout(x)` for `x` of shape [n, in] or [batch, seq, in].
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // TODO: scaling * (x A^T) B^T, shaped [..., out_features], handed back in x's dtype (the
        // adapter may be held in another dtype than x). In training (`train`) with dropout > 0,
        // dropout acts on the adapter's input, never its output; in evaluation the layer is
        // deterministic. Never form the [out, in] matrix B A here: it costs out * in per call. An x
        // whose last dimension is not in_features is a `LoraError::shape` error naming the "LoRA
        // input". Gradients must reach x, A and B.
        // Book: "The forward pass", "Dropout".
        todo!("t01: LoraLayer::forward")
    }
}
