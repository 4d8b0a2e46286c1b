//! Task 1.2: `LinearWithLora`, a frozen linear layer with an adapter beside it.
//!
//! Hu et al. 2021, eq. 3: `h = W0 x + b + scaling * B A x`. Read book/src/t02_linear_with_lora.md
//! beside this file. Grade it with `cargo test --features exercises --test t02_linear_with_lora`.
#![allow(unused_variables, unused_imports)]

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
    /// Wrap a base layer (`weight` [out, in], optional `bias` \[out\]) with `lora`. The base
    /// tensors are detached, so they stay frozen even if they came from a `Var`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, lora: LoraLayer) -> Result<Self> {
        // TODO: the layer, if the parts fit: `weight` is [out, in] with the adapter's in_features
        // and out_features, and `bias`, if any, is [out]. Otherwise a `LoraError::shape` error
        // naming the part that is wrong (a bias error must mention the bias). The base weight and
        // bias are held as constants, so that they get no gradient even when they arrive as a
        // `Var`.
        // Book: "What freezing means in candle".
        todo!("t02: LinearWithLora::new")
    }

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

    /// `x W0^T + b + lora(x)`; `train` switches the adapter's dropout on.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // TODO: x W0^T + b + lora(x): the base layer's output plus the adapter's, `train` reaching
        // the adapter only. While B = 0 it equals the base layer's output bit for bit; the gradient
        // with respect to x flows through both paths; an x of the wrong width is an error.
        // Book: "The forward pass".
        todo!("t02: LinearWithLora::forward")
    }
}
