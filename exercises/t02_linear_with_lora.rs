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
    /// Wrap a base layer (`weight` [out, in], optional `bias` [out]) with `lora`. The base
    /// tensors are detached, so they stay frozen even if they came from a `Var`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, lora: LoraLayer) -> Result<Self> {
        // TODO:
        // 1. Check that weight is [out, in] and matches the adapter (lora.in_features(),
        //    lora.out_features()), and that bias, if any, is [out]; otherwise return a
        //    `LoraError::shape(...)` naming what is wrong.
        // 2. Store `weight.detach()` and the detached bias: a detached tensor is a constant to
        //    candle, which is what "frozen" means here. Book: "What freezing means in candle".
        todo!("t02: LinearWithLora::new")
    }

    /// The frozen base weight W0 [out, in].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The frozen base bias [out], if any.
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
        // TODO: the base layer's output (`linear_forward(x, &self.weight, self.bias.as_ref())`)
        // plus the adapter's (`self.lora.forward(x, train)`).
        todo!("t02: LinearWithLora::forward")
    }
}
