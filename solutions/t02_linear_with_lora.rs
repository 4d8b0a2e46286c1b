//! Task 1.2: `LinearWithLora`, a frozen linear layer with an adapter beside it.
//!
//! Hu et al. 2021, eq. 3: `h = W0 x + b + scaling * B A x`. The base weight W0 and bias are plain
//! tensors (constants to candle), so backpropagation never computes their gradients and no
//! optimizer can touch them; only the adapter's A and B are `Var`s.

use candle_core::Tensor;

use crate::compute::ops::linear_forward;
use crate::error::{LoraError, Result};
use crate::tasks::t01_lora_layer::LoraLayer;

/// A frozen base linear layer plus a LoRA adapter.
#[derive(Clone, Debug)]
pub struct LinearWithLora {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: LoraLayer,
}

impl LinearWithLora {
    // ANCHOR: new
    /// Wrap a base layer (`weight` [out, in], optional `bias` \[out\]) with `lora`. The base
    /// tensors are detached, so they stay frozen even if they came from a `Var`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, lora: LoraLayer) -> Result<Self> {
        let (out_features, in_features) = weight
            .dims2()
            .map_err(|_| LoraError::shape("base weight", "[out_features, in_features]", weight.dims()))?;
        if lora.in_features() != in_features || lora.out_features() != out_features {
            return Err(LoraError::shape(
                "LoRA adapter (A [r, in], B [out, r]) for the base weight",
                format!("in {in_features}, out {out_features}"),
                &[lora.out_features(), lora.in_features()],
            ));
        }
        if let Some(b) = bias {
            if b.dims() != [out_features] {
                return Err(LoraError::shape("base bias", format!("[{out_features}]"), b.dims()));
            }
        }
        Ok(LinearWithLora { weight: weight.detach(), bias: bias.map(Tensor::detach), lora })
    }
    // ANCHOR_END: new

    /// The frozen base weight W0 [out, in].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The frozen base bias \[out\], if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The adapter.
    pub fn lora(&self) -> &LoraLayer {
        &self.lora
    }

    /// The adapter, mutably.
    pub fn lora_mut(&mut self) -> &mut LoraLayer {
        &mut self.lora
    }

    // ANCHOR: forward
    /// `x W0^T + b + lora(x)`; `train` switches the adapter's dropout on.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let base = linear_forward(x, &self.weight, self.bias.as_ref())?;
        let update = self.lora.forward(x, train)?;
        Ok((base + update)?)
    }
    // ANCHOR_END: forward
}
