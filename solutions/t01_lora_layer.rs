//! Task 1.1: `LoraLayer`, the low-rank update itself.
//!
//! Hu et al. 2021 (arXiv 2106.09685), eq. 3: for a frozen weight W0 [out, in],
//! `h = W0 x + (alpha / r) * B A x` with A [r, in] and B [out, r], r << min(in, out).
//! A starts random and B starts at zero, so `B A = 0` and training begins from the base model.
//! Initialisation follows PEFT (`peft/tuners/lora/layer.py`, `reset_lora_parameters`).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{LoraError, Result};

use crate::lora::config::{LoraConfig, LoraInit};

use crate::lora::param::Param;

// ANCHOR: scaling
/// The factor in front of `B A`: alpha / r, or alpha / sqrt(r) with rsLoRA.
pub fn lora_scaling(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}
// ANCHOR_END: scaling

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
    // ANCHOR: new
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
        config.validate()?;
        let r = config.r;
        let n = r * in_features;
        let values: Vec<f32> = match config.init {
            // kaiming_uniform_(A, a = sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in)
            // = 1 / sqrt(in). Small enough that B A x stays small once B moves.
            LoraInit::KaimingUniform => {
                let bound = 1.0 / (in_features as f32).sqrt();
                let dist = Uniform::new(-bound, bound).map_err(|e| LoraError::config("init", e.to_string()))?;
                dist.sample_iter(rng).take(n).collect()
            }
            LoraInit::Gaussian => {
                let dist = Normal::new(0.0, 1.0 / r as f32).map_err(|e| LoraError::config("init", e.to_string()))?;
                dist.sample_iter(rng).take(n).collect()
            }
        };
        let a = Tensor::from_vec(values, (r, in_features), device)?.to_dtype(dtype)?;
        // B = 0 makes the adapted layer equal the base layer at the start of training.
        let b = Tensor::zeros((out_features, r), dtype, device)?;
        Self::from_tensors(&a, &b, config)
    }
    // ANCHOR_END: new

    /// An adapter with the given A [r, in] and B [out, r] (copied into trainable `Var`s), for
    /// loading a saved adapter. The rank is taken from A and must equal `config.r`.
    pub fn from_tensors(a: &Tensor, b: &Tensor, config: &LoraConfig) -> Result<Self> {
        config.validate()?;
        let r = config.r;
        let (a_r, _) = a.dims2().map_err(|_| LoraError::shape("lora_A", format!("[{r}, in]"), a.dims()))?;
        let (_, b_r) = b.dims2().map_err(|_| LoraError::shape("lora_B", format!("[out, {r}]"), b.dims()))?;
        if a_r != r {
            return Err(LoraError::shape("lora_A", format!("[{r}, in] (r = {r})"), a.dims()));
        }
        if b_r != r {
            return Err(LoraError::shape("lora_B", format!("[out, {r}] (r = {r})"), b.dims()));
        }
        Ok(LoraLayer {
            a: Param::trainable(a)?,
            b: Param::trainable(b)?,
            scaling: lora_scaling(config.alpha, r, config.use_rslora),
            dropout: config.dropout,
        })
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

    // ANCHOR: forward
    /// `scaling * B A dropout(x)` for `x` of shape [n, in] or [batch, seq, in].
    /// Computed as `(x A^T) B^T`: two thin matmuls through rank r, never the [out, in] product.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let in_features = self.in_features();
        if x.dims().last() != Some(&in_features) {
            return Err(LoraError::shape("LoRA input", format!("[..., {in_features}]"), x.dims()));
        }
        // Adapters may be kept in f32 under a bf16 base (as PEFT does): compute in
        // the adapter's dtype and hand back the caller's.
        let x_dtype = x.dtype();
        let mut h = x.to_dtype(self.a.tensor().dtype())?;
        if train && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout)?;
        }
        let h = h.broadcast_matmul(&self.a.tensor().t()?)?; // [..., r]
        let h = h.broadcast_matmul(&self.b.tensor().t()?)?; // [..., out]
        Ok((h * self.scaling)?.to_dtype(x_dtype)?)
    }
    // ANCHOR_END: forward
}
