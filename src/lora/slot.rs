//! Where a model keeps one linear layer: [`LinearSlot`].
//!
//! Rust has no `setattr`, so a model cannot have a layer swapped from outside the way PEFT does
//! it. Instead every linear layer sits in a slot, and a model lists its slots by Hugging Face name
//! ([`crate::lora::model::LoraModel`]). A slot holds a plain linear layer, the same layer with a
//! LoRA adapter (task 1.2), or a kind of layer a later chapter plugs in through [`CustomLinear`]
//! (QLoRA's quantized base, several adapters per row). The tasks use the slot's methods
//! (`adapter`, `set_adapter`, `base_weight`, ...), which every kind answers, so chapter-1 code
//! never names a kind from a later chapter.
//!
//! May use: `compute`, `lora::{linear, param}`, tasks t01-t02.

use std::any::Any;

use candle_core::{Device, Tensor};

use crate::error::{LoraError, Result};
use crate::lora::linear::Linear;
use crate::lora::param::Param;
use crate::tasks::t01_lora_layer::LoraLayer;
use crate::tasks::t02_linear_with_lora::LinearWithLora;

// ANCHOR: slot
/// Where a model keeps one linear layer: the plain layer, or the layer with an adapter.
///
/// `LinearWithLora` is the type the crate's API re-exports, so with `--features exercises` every
/// model runs the learner's code.
#[derive(Clone, Debug)]
pub enum LinearSlot {
    /// A plain linear layer, frozen or trainable.
    Linear(Linear),
    /// A frozen linear layer plus a LoRA adapter.
    Lora(LinearWithLora),
    /// Another kind of linear layer, plugged in by a later chapter (see [`CustomLinear`]).
    Custom(Box<dyn CustomLinear>),
}
// ANCHOR_END: slot

/// A kind of linear layer that lives in a slot without the tasks knowing it: QLoRA's quantized
/// base (`crate::qlora`), a base serving several adapters per row (`crate::serving`). Each
/// answers the questions the tasks ask every slot.
pub trait CustomLinear: std::fmt::Debug + Send + Sync {
    /// The layer's output for `x` [..., in]; `train` switches the adapter's dropout on.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// `residual + forward(x)`; a kind may fuse the two.
    fn forward_residual(&self, residual: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok((residual + self.forward(x, train)?)?)
    }
    /// The LoRA adapter beside the base, if there is one.
    fn adapter(&self) -> Option<&LoraLayer>;
    /// The LoRA adapter, mutably.
    fn adapter_mut(&mut self) -> Option<&mut LoraLayer>;
    /// Put `lora` beside the base (its shapes checked); an error where this kind takes none.
    fn set_adapter(&mut self, lora: LoraLayer) -> Result<()>;
    /// Detach and return the adapter.
    fn take_adapter(&mut self) -> Option<LoraLayer>;
    /// The base weight [out, in] as a dense tensor (for merging and export).
    fn base_weight(&self) -> Result<Tensor>;
    /// The base bias \[out\], if any.
    fn base_bias(&self) -> Option<&Tensor>;
    /// (in_features, out_features).
    fn in_out_features(&self) -> (usize, usize);
    /// The device the layer computes on.
    fn device(&self) -> &Device;
    /// The layer without any adapter. Cheap: tensors are shared.
    fn without_adapter(&self) -> Result<LinearSlot>;
    /// Its parameters named as PEFT names them under the module (`weight`, `bias`,
    /// `lora_A.weight`, `lora_B.weight`), for counting and gradient reports.
    fn named_params(&self) -> Vec<(String, Param)>;
    /// Why the base cannot be read as a plain layer now (export, full fine-tuning), if so.
    fn why_not_plain(&self) -> Option<&'static str>;
    /// For downcasting to the concrete kind.
    fn as_any(&self) -> &dyn Any;
    /// A copy in a new box (`Clone` for a trait object).
    fn box_clone(&self) -> Box<dyn CustomLinear>;
}

impl Clone for Box<dyn CustomLinear> {
    fn clone(&self) -> Self {
        self.box_clone()
    }
}

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
            LinearSlot::Custom(k) => k.forward(x, train),
        }
    }

    /// `residual + self.forward(x)`: the residual connection after a layer. A frozen plain
    /// layer on the CPU takes one fused op ([`crate::compute::fused::residual_linear`]), which
    /// does not keep the layer's output alive for the backward.
    pub(crate) fn forward_residual(&self, residual: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            LinearSlot::Custom(k) => k.forward_residual(residual, x, train),
            LinearSlot::Linear(l) => {
                let (w, b) = (l.weight.tensor(), l.bias.as_ref().map(|b| b.tensor()));
                let frozen = !w.track_op() && !b.is_some_and(|b| b.track_op());
                let mut acts = vec![residual, x];
                acts.extend(b);
                if frozen && crate::compute::fused::usable_with_weight(&acts, w) {
                    return Ok(crate::compute::fused::residual_linear::residual_linear(residual, x, w, b)?);
                }
                Ok((residual + l.forward(x)?)?)
            }
            LinearSlot::Lora(_) => Ok((residual + self.forward(x, train)?)?),
        }
    }

    /// The adapted dense layer, if this slot is one. Any slot's adapter is reached through
    /// [`LinearSlot::adapter`].
    pub fn lora(&self) -> Option<&LinearWithLora> {
        match self {
            LinearSlot::Lora(l) => Some(l),
            _ => None,
        }
    }

    /// The adapted dense layer, mutably, if this slot is one.
    pub fn lora_mut(&mut self) -> Option<&mut LinearWithLora> {
        match self {
            LinearSlot::Lora(l) => Some(l),
            _ => None,
        }
    }

    /// The plugged-in kind as its concrete type `K`, if it is one.
    pub fn kind<K: CustomLinear + 'static>(&self) -> Option<&K> {
        match self {
            LinearSlot::Custom(k) => k.as_any().downcast_ref::<K>(),
            _ => None,
        }
    }

    /// The LoRA adapter of this layer, whatever its kind.
    pub fn adapter(&self) -> Option<&LoraLayer> {
        match self {
            LinearSlot::Lora(l) => Some(l.lora()),
            LinearSlot::Linear(_) => None,
            LinearSlot::Custom(k) => k.adapter(),
        }
    }

    /// The LoRA adapter of this layer, mutably.
    pub(crate) fn adapter_mut(&mut self) -> Option<&mut LoraLayer> {
        match self {
            LinearSlot::Lora(l) => Some(l.lora_mut()),
            LinearSlot::Linear(_) => None,
            LinearSlot::Custom(k) => k.adapter_mut(),
        }
    }

    // ANCHOR: set_adapter
    /// Put `lora` beside this layer's base: a plain layer becomes a [`LinearWithLora`], another
    /// kind keeps its base (a quantized weight stays quantized). A layer that already has an
    /// adapter is an error and is left as it was.
    pub fn set_adapter(&mut self, lora: LoraLayer) -> Result<()> {
        match self {
            LinearSlot::Linear(l) => {
                let bias = l.bias.as_ref().map(|b| b.tensor().clone());
                *self = LinearSlot::Lora(LinearWithLora::new(l.weight.tensor(), bias.as_ref(), lora)?);
                Ok(())
            }
            LinearSlot::Lora(_) => Err(LoraError::config("slot", "already has a LoRA adapter")),
            LinearSlot::Custom(k) if k.adapter().is_some() => {
                Err(LoraError::config("slot", "already has a LoRA adapter"))
            }
            LinearSlot::Custom(k) => k.set_adapter(lora),
        }
    }
    // ANCHOR_END: set_adapter

    /// Detach and return the adapter, leaving the base in the slot.
    pub fn take_adapter(&mut self) -> Result<Option<LoraLayer>> {
        match self {
            LinearSlot::Linear(_) => Ok(None),
            LinearSlot::Lora(l) => {
                let lora = l.lora().clone();
                *self = LinearSlot::Linear(Linear::frozen(l.weight(), l.bias())?);
                Ok(Some(lora))
            }
            LinearSlot::Custom(k) => Ok(k.take_adapter()),
        }
    }

    /// The base layer's weight [out, in], frozen or not. A quantized weight is dequantized to a
    /// full-size f32 tensor: for merging and export, not for the forward pass.
    pub fn base_weight(&self) -> Result<Tensor> {
        Ok(match self {
            LinearSlot::Linear(l) => l.weight.tensor().clone(),
            LinearSlot::Lora(l) => l.weight().clone(),
            LinearSlot::Custom(k) => k.base_weight()?,
        })
    }

    /// The base layer's bias \[out\], if any.
    pub fn base_bias(&self) -> Option<&Tensor> {
        match self {
            LinearSlot::Linear(l) => l.bias.as_ref().map(|b| b.tensor()),
            LinearSlot::Lora(l) => l.bias(),
            LinearSlot::Custom(k) => k.base_bias(),
        }
    }

    /// (in_features, out_features) of the base layer.
    pub fn in_out_features(&self) -> (usize, usize) {
        match self {
            LinearSlot::Linear(l) => (l.in_features(), l.out_features()),
            LinearSlot::Lora(l) => (l.weight().dims()[1], l.weight().dims()[0]),
            LinearSlot::Custom(k) => k.in_out_features(),
        }
    }

    /// The device the layer computes on.
    pub fn device(&self) -> &Device {
        match self {
            LinearSlot::Linear(l) => l.weight.tensor().device(),
            LinearSlot::Lora(l) => l.weight().device(),
            LinearSlot::Custom(k) => k.device(),
        }
    }

    /// Every parameter of the layer, named under the module as PEFT names it: `weight` and
    /// `bias` of the base, `lora_A.weight` and `lora_B.weight` of an adapter.
    pub fn named_params(&self) -> Vec<(String, Param)> {
        match self {
            LinearSlot::Linear(l) => l.named_params().into_iter().map(|(n, p)| (n.to_string(), p.clone())).collect(),
            LinearSlot::Lora(l) => {
                let mut out = vec![("weight".to_string(), Param::Frozen(l.weight().clone()))];
                if let Some(b) = l.bias() {
                    out.push(("bias".to_string(), Param::Frozen(b.clone())));
                }
                out.push(("lora_A.weight".to_string(), l.lora().a().clone()));
                out.push(("lora_B.weight".to_string(), l.lora().b().clone()));
                out
            }
            LinearSlot::Custom(k) => k.named_params(),
        }
    }

    /// Why this slot cannot be read as a plain layer now (an adapter still in it, a layer
    /// serving several adapters), or `None` for a plain layer.
    pub(crate) fn why_not_plain(&self) -> Option<&'static str> {
        match self {
            LinearSlot::Linear(_) => None,
            LinearSlot::Lora(_) => Some("still has a LoRA adapter; merge it (merge_lora_weights)"),
            LinearSlot::Custom(k) => k.why_not_plain(),
        }
    }

    /// The same layer without its adapter (or adapters): the plain base, of whatever kind.
    /// Cheap: the base tensors are shared, not copied.
    pub fn without_adapter(&self) -> Result<LinearSlot> {
        Ok(match self {
            LinearSlot::Linear(_) => self.clone(),
            LinearSlot::Lora(l) => LinearSlot::Linear(Linear::frozen(l.weight(), l.bias())?),
            LinearSlot::Custom(k) => k.without_adapter()?,
        })
    }

    /// The base of this layer with `lora` beside it. Cheap: tensors are shared, not copied.
    pub fn with_adapter(&self, lora: LoraLayer) -> Result<LinearSlot> {
        let mut slot = self.without_adapter()?;
        slot.set_adapter(lora)?;
        Ok(slot)
    }
}

// ANCHOR: fused_dispatch
/// The adapted layer as one fused op ([`crate::compute::fused::lora_linear`]) when it can be: CPU f32/f64
/// and no dropout to apply. Same values as [`LinearWithLora::forward`] (tested), fewer tensors
/// kept for the backward. With `--features exercises` the learner's `forward` always runs.
#[cfg(not(feature = "exercises"))]
fn fused_lora_forward(l: &LinearWithLora, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
    let lora = l.lora();
    let (a, b) = (lora.a().tensor(), lora.b().tensor());
    if (train && lora.dropout() > 0.0) || !crate::compute::fused::usable_with_weight(&[x, a, b], l.weight()) {
        return Ok(None);
    }
    if l.bias().is_some_and(|b| !crate::compute::fused::usable(&[x, b])) {
        return Ok(None);
    }
    Ok(Some(crate::compute::fused::lora_linear::lora_linear(x, l.weight(), l.bias(), a, b, lora.scaling())?))
}
// ANCHOR_END: fused_dispatch
