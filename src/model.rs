//! The Rust `named_modules()`: how a model shows its linear layers to LoRA.
//!
//! Rust has no `setattr`, so a model cannot have a layer swapped from outside the way PEFT does
//! it. Instead every linear layer sits in a [`LinearSlot`], and a model implements [`LoraModel`]
//! to list its slots by their Hugging Face module names (`model.layers.3.self_attn.q_proj`).
//! `inject_lora`, saving, loading and merging are written once against this trait, so the real
//! models and the graders' small test model share them.

use candle_core::Tensor;

use crate::multi::PerRowLinear;
use crate::quant::QuantizedLinear;
use crate::{Linear, LinearWithLora, LoraLayer, Param, Result};

// ANCHOR: slot
/// Where a model keeps one linear layer: either the plain layer or the layer with an adapter.
///
/// `LinearWithLora` is the type the crate's API re-exports, so with `--features exercises` every
/// model runs the learner's code.
#[derive(Clone, Debug)]
pub enum LinearSlot {
    /// A plain linear layer, frozen or trainable.
    Linear(Linear),
    /// A frozen linear layer plus a LoRA adapter.
    Lora(LinearWithLora),
    /// A frozen quantized linear layer (QLoRA, t09), with or without an adapter.
    Quantized(QuantizedLinear),
    /// A base layer with several adapters, one per row of the batch (serving, t10).
    PerRow(PerRowLinear),
}
// ANCHOR_END: slot

impl LinearSlot {
    /// The layer's output for `x` [..., in]; `train` switches the adapter's dropout on.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            LinearSlot::Linear(l) => l.forward(x),
            LinearSlot::Lora(l) => {
                #[cfg(not(feature = "exercises"))]
                if let Some(y) = fused_lora_forward(l, x, train)? {
                    return Ok(y);
                }
                l.forward(x, train)
            }
            LinearSlot::Quantized(q) => q.forward(x, train),
            LinearSlot::PerRow(p) => p.forward(x),
        }
    }

    /// `residual + self.forward(x)`: the residual connection after a layer. A frozen plain
    /// layer on the CPU takes one fused op ([`crate::fused::residual_linear`]), which does not
    /// keep the layer's output alive for the backward.
    pub fn forward_residual(&self, residual: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        if let LinearSlot::Quantized(q) = self {
            let bias_ok = q.bias().is_none_or(|b| crate::fused::usable(&[x, b]));
            if q.adapter().is_none() && bias_ok && crate::fused::usable(&[residual, x]) {
                let w = crate::fused::FrozenWeight::Quantized(q.weight().clone());
                return Ok(crate::fused::residual_linear::residual_linear_with(residual, x, w, q.bias())?);
            }
        }
        if let LinearSlot::Linear(l) = self {
            let (w, b) = (l.weight.tensor(), l.bias.as_ref().map(|b| b.tensor()));
            let frozen = !w.track_op() && !b.is_some_and(|b| b.track_op());
            let mut all = vec![residual, x, w];
            all.extend(b);
            if frozen && crate::fused::usable(&all) {
                return Ok(crate::fused::residual_linear::residual_linear(residual, x, w, b)?);
            }
        }
        Ok((residual + self.forward(x, train)?)?)
    }

    /// The adapted dense layer, if this slot is one. A quantized layer's adapter is reached
    /// through [`LinearSlot::adapter`], which covers both.
    pub fn lora(&self) -> Option<&LinearWithLora> {
        match self {
            LinearSlot::Lora(l) => Some(l),
            LinearSlot::Linear(_) | LinearSlot::Quantized(_) | LinearSlot::PerRow(_) => None,
        }
    }

    /// The adapted dense layer, mutably, if this slot is one.
    pub fn lora_mut(&mut self) -> Option<&mut LinearWithLora> {
        match self {
            LinearSlot::Lora(l) => Some(l),
            LinearSlot::Linear(_) | LinearSlot::Quantized(_) | LinearSlot::PerRow(_) => None,
        }
    }

    /// The LoRA adapter of this layer, dense base or quantized.
    pub fn adapter(&self) -> Option<&LoraLayer> {
        match self {
            LinearSlot::Lora(l) => Some(l.lora()),
            LinearSlot::Quantized(q) => q.adapter(),
            LinearSlot::Linear(_) | LinearSlot::PerRow(_) => None,
        }
    }

    /// The LoRA adapter of this layer, mutably.
    pub fn adapter_mut(&mut self) -> Option<&mut LoraLayer> {
        match self {
            LinearSlot::Lora(l) => Some(l.lora_mut()),
            LinearSlot::Quantized(q) => q.adapter_mut(),
            LinearSlot::Linear(_) | LinearSlot::PerRow(_) => None,
        }
    }

    /// The base layer's weight [out, in], frozen or not. A quantized weight is dequantized to a
    /// full-size f32 tensor: for merging and export, not for the forward pass.
    pub fn base_weight(&self) -> Result<Tensor> {
        Ok(match self {
            LinearSlot::Linear(l) => l.weight.tensor().clone(),
            LinearSlot::Lora(l) => l.weight().clone(),
            LinearSlot::Quantized(q) => q.weight().dequantize(q.device())?,
            LinearSlot::PerRow(p) => p.base().base_weight()?,
        })
    }

    /// The base layer's bias [out], if any.
    pub fn base_bias(&self) -> Option<&Tensor> {
        match self {
            LinearSlot::Linear(l) => l.bias.as_ref().map(|b| b.tensor()),
            LinearSlot::Lora(l) => l.bias(),
            LinearSlot::Quantized(q) => q.bias(),
            LinearSlot::PerRow(p) => p.base().base_bias(),
        }
    }

    /// (in_features, out_features) of the base layer.
    pub fn features(&self) -> (usize, usize) {
        match self {
            LinearSlot::Linear(l) => (l.in_features(), l.out_features()),
            LinearSlot::Lora(l) => (l.weight().dims()[1], l.weight().dims()[0]),
            LinearSlot::Quantized(q) => {
                let (o, i) = q.weight().dims();
                (i, o)
            }
            LinearSlot::PerRow(p) => p.base().features(),
        }
    }

    /// The device the layer computes on.
    pub fn device(&self) -> &candle_core::Device {
        match self {
            LinearSlot::Linear(l) => l.weight.tensor().device(),
            LinearSlot::Lora(l) => l.weight().device(),
            LinearSlot::Quantized(q) => q.device(),
            LinearSlot::PerRow(p) => p.base().device(),
        }
    }

    /// The same layer without its adapter (or adapters): the plain base, dense or quantized.
    /// Cheap: the base tensors are shared, not copied.
    pub fn without_adapter(&self) -> Result<LinearSlot> {
        Ok(match self {
            LinearSlot::Linear(_) => self.clone(),
            LinearSlot::Lora(l) => LinearSlot::Linear(Linear::frozen(l.weight(), l.bias())?),
            LinearSlot::Quantized(q) => {
                let mut q = q.clone();
                q.take_adapter();
                LinearSlot::Quantized(q)
            }
            LinearSlot::PerRow(p) => p.base().clone(),
        })
    }

    /// The base of this layer with `lora` beside it: a `LinearWithLora` over a dense base, the
    /// adapter set into a quantized one. Cheap: tensors are shared, not copied.
    pub fn with_adapter(&self, lora: LoraLayer) -> Result<LinearSlot> {
        Ok(match self.without_adapter()? {
            LinearSlot::Quantized(mut q) => {
                q.set_adapter(lora)?;
                LinearSlot::Quantized(q)
            }
            base => LinearSlot::Lora(LinearWithLora::new(&base.base_weight()?, base.base_bias(), lora)?),
        })
    }
}

// ANCHOR: fused_dispatch
/// The adapted layer as one fused op ([`crate::fused::lora_linear`]) when it can be: CPU f32/f64
/// and no dropout to apply. Same values as [`LinearWithLora::forward`] (tested), fewer tensors
/// kept for the backward. With `--features exercises` the learner's `forward` always runs.
#[cfg(not(feature = "exercises"))]
fn fused_lora_forward(l: &LinearWithLora, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
    let lora = l.lora();
    let (a, b) = (lora.a().tensor(), lora.b().tensor());
    if (train && lora.dropout() > 0.0) || !crate::fused::usable(&[x, l.weight(), a, b]) {
        return Ok(None);
    }
    if l.bias().is_some_and(|b| !crate::fused::usable(&[x, b])) {
        return Ok(None);
    }
    Ok(Some(crate::fused::lora_linear::lora_linear(x, l.weight(), l.bias(), a, b, lora.scaling())?))
}
// ANCHOR_END: fused_dispatch

/// A model whose linear layers can carry LoRA adapters.
///
/// Names follow Hugging Face: a linear slot is named like its module (`lm_head`,
/// `model.layers.0.mlp.up_proj`), any other weight like its parameter (`model.norm.weight`).
pub trait LoraModel {
    /// Every linear layer with its module name, in the model's order.
    fn linears(&self) -> Vec<(String, &LinearSlot)>;

    /// Every linear layer, mutably, in the same order as [`LoraModel::linears`].
    fn linears_mut(&mut self) -> Vec<(String, &mut LinearSlot)>;

    /// Every weight that is not inside a linear slot (embeddings, norms), by parameter name.
    fn params(&self) -> Vec<(String, &Param)>;

    /// Every weight that is not inside a linear slot, mutably.
    fn params_mut(&mut self) -> Vec<(String, &mut Param)>;

    /// Weights outside the linear slots that this model keeps quantized (QLoRA's embedding
    /// table), by parameter name. Their entry in [`LoraModel::params`] is a frozen stand-in with
    /// the right shape and no values (one zero, broadcast), there so that counting and freezing
    /// see every parameter; the model itself reads the quantized weight.
    fn quantized_params(&self) -> Vec<(String, std::sync::Arc<dyn crate::quant::QuantizedWeight>)> {
        Vec::new()
    }

    /// Keep the parameter `name` quantized as `weight` from now on. Returns false, changing
    /// nothing, where the model cannot (the default; Llama can for its embedding table).
    fn set_quantized_param(
        &mut self,
        name: &str,
        weight: std::sync::Arc<dyn crate::quant::QuantizedWeight>,
    ) -> Result<bool> {
        let _ = (name, weight);
        Ok(false)
    }

    /// The module name of the output head, if the model has a linear one. `"all-linear"` skips
    /// it, as PEFT does: adapting the head of a language model is rarely wanted.
    fn output_head(&self) -> Option<&str> {
        None
    }

    /// Where the base model came from (a Hub id or a folder), written to `adapter_config.json`.
    fn name_or_path(&self) -> String {
        String::new()
    }

    /// Whether the original checkpoint stores its linears as GPT-2's `Conv1D` ([in, out]); PEFT
    /// writes `fan_in_fan_out: true` for those.
    fn conv1d_layout(&self) -> bool {
        false
    }
}
