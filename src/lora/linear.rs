//! A plain linear layer `y = x W^T + b`, with W stored as [out, in] like PyTorch's `nn.Linear`.
//!
//! The weight is a [`Param`], so the same layer serves a frozen base model (LoRA) and full
//! fine-tuning. [`crate::compute::ops::linear_forward`] is the one place a linear layer's matmul happens, so that the
//! adapted layers of the exercises use it too.

use candle_core::Tensor;

use crate::compute::ops::linear_forward;
use crate::error::{LoraError, Result};

use crate::lora::param::Param;

/// A linear layer whose weight and bias may each be frozen or trainable.
#[derive(Clone, Debug)]
pub struct Linear {
    /// [out_features, in_features]
    pub weight: Param,
    /// \[out_features\]
    pub bias: Option<Param>,
}

impl Linear {
    /// A frozen linear layer; checks that `bias` has `out_features` entries.
    pub fn frozen(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_features, _) = weight
            .dims2()
            .map_err(|_| LoraError::shape("linear weight", "[out_features, in_features]", weight.dims()))?;
        if let Some(b) = bias {
            if b.dims() != [out_features] {
                return Err(LoraError::shape("linear bias", format!("[{out_features}]"), b.dims()));
            }
        }
        Ok(Linear { weight: Param::frozen(weight), bias: bias.map(Param::frozen) })
    }

    /// Number of input features.
    pub fn in_features(&self) -> usize {
        self.weight.tensor().dims()[1]
    }

    /// Number of output features.
    pub fn out_features(&self) -> usize {
        self.weight.tensor().dims()[0]
    }

    /// `x W^T + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear_forward(x, self.weight.tensor(), self.bias.as_ref().map(|b| b.tensor()))
    }

    /// The weight and the bias, if any, with their parameter names.
    pub fn named_params(&self) -> Vec<(&'static str, &Param)> {
        let mut out = vec![("weight", &self.weight)];
        if let Some(b) = &self.bias {
            out.push(("bias", b));
        }
        out
    }

    /// Freeze the weight and the bias.
    pub fn freeze(&mut self) {
        self.weight.freeze();
        if let Some(b) = &mut self.bias {
            b.freeze();
        }
    }
}
