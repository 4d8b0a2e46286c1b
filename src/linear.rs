//! A plain linear layer `y = x W^T + b`, with W stored as [out, in] like PyTorch's `nn.Linear`.
//!
//! The weight is a [`Param`], so the same layer serves a frozen base model (LoRA) and full
//! fine-tuning. [`linear_forward`] is the one place a linear layer's matmul happens, so that the
//! adapted layers of the exercises use it too.

use candle_core::Tensor;

use crate::{LoraError, Param, Result};

/// `x W^T + b` for `x` of shape [n, in] or [batch, seq, in], `weight` [out, in], `bias` [out].
pub fn linear_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_features, in_features) = weight.dims2()?;
    if x.dims().last() != Some(&in_features) {
        return Err(LoraError::shape(
            "linear input",
            format!("[..., {in_features}] (the weight is [{out_features}, {in_features}])"),
            x.dims(),
        ));
    }
    // ANCHOR: dispatch
    // A weight that is (or comes from) a `Var` is being trained and takes candle's matmul, whose
    // backward computes both gradients. A frozen weight takes `frozen_linear`, which skips the
    // weight's gradient.
    let y = if weight.track_op() { x.broadcast_matmul(&weight.t()?)? } else { crate::ops::frozen_linear(x, weight)? };
    // ANCHOR_END: dispatch
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// A linear layer whose weight and bias may each be frozen or trainable.
#[derive(Clone, Debug)]
pub struct Linear {
    /// [out_features, in_features]
    pub weight: Param,
    /// [out_features]
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
