//! Whole-model quantization for QLoRA: every frozen linear of a model (and the tables it can
//! keep quantized) replaced by t09's NF4 or by a GGUF file's own blocks, and the bytes it saves.
//!
//! May use: `compute`, `lora`, `qlora::linear`, task t09.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::compute::quantized::QuantizedWeight;
use crate::error::{LoraError, Result};
use crate::lora::model::LoraModel;
use crate::lora::slot::LinearSlot;
use crate::qlora::linear::QuantizedLinear;
use crate::tasks::t09_qlora::Nf4Tensor;

impl QuantizedWeight for Nf4Tensor {
    fn dims(&self) -> (usize, usize) {
        (self.shape()[0], self.shape()[1])
    }

    fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Nf4Tensor::dequantize(self, device)
    }

    fn storage_bytes(&self) -> usize {
        Nf4Tensor::storage_bytes(self)
    }

    fn format(&self) -> String {
        "nf4".into()
    }
}

/// Which quantization a frozen base gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseQuantization {
    /// QLoRA's NF4 with double quantization (t09).
    Nf4,
}

// ANCHOR: quantize_base
/// Replace every plain frozen linear layer of `model` (not the output head, as bitsandbytes
/// leaves it) by a quantized one, one layer at a time, and keep the frozen tables the model can
/// keep quantized (Llama's embedding, which SmolLM2's head shares) quantized too. Adapted or
/// trainable layers are an error: quantize the base first, then inject. Returns how many
/// weights were quantized.
pub fn quantize_base(model: &mut dyn LoraModel, q: BaseQuantization) -> Result<usize> {
    let head = model.output_head().map(str::to_string);
    let mut count = 0;
    for (name, slot) in model.linears_mut() {
        if Some(&name) == head.as_ref() {
            continue;
        }
        let LinearSlot::Linear(l) = slot else {
            if matches!(slot, LinearSlot::Lora(_)) {
                return Err(LoraError::module(name, "has an adapter; quantize the base before injecting LoRA"));
            }
            continue;
        };
        if l.named_params().iter().any(|(_, p)| p.is_trainable()) {
            return Err(LoraError::module(name, "is trainable; only a frozen base is quantized"));
        }
        let weight: Arc<dyn QuantizedWeight> = match q {
            BaseQuantization::Nf4 => Arc::new(Nf4Tensor::quantize(l.weight.tensor())?),
        };
        let bias = l.bias.as_ref().map(|b| b.tensor().clone());
        let device = l.weight.tensor().device().clone();
        *slot = LinearSlot::Custom(Box::new(QuantizedLinear::new(weight, bias.as_ref(), &device)?));
        count += 1;
    }
    // Then the tables the model can keep quantized (Llama's embedding); 1-D norms never are.
    let tables: Vec<(String, Tensor)> = model
        .params()
        .into_iter()
        .filter(|(_, p)| p.tensor().rank() == 2 && !p.is_trainable())
        .map(|(n, p)| (n, p.tensor().clone()))
        .collect();
    let already: Vec<String> = model.quantized_params().into_iter().map(|(n, _)| n).collect();
    for (name, t) in tables {
        if already.contains(&name) {
            continue;
        }
        let weight: Arc<dyn QuantizedWeight> = match q {
            BaseQuantization::Nf4 => Arc::new(Nf4Tensor::quantize(&t)?),
        };
        if model.set_quantized_param(&name, weight)? {
            count += 1;
        }
    }
    Ok(count)
}
// ANCHOR_END: quantize_base

/// Replace the named plain frozen linear layers of `model` by the given quantized weights
/// (a GGUF file's own blocks, [`crate::models::gguf::GgufFile::quantized_linears`]). Each
/// weight must have its layer's shape. Returns how many layers were replaced.
pub fn use_quantized_weights(
    model: &mut dyn LoraModel,
    mut weights: std::collections::HashMap<String, Arc<dyn QuantizedWeight>>,
) -> Result<usize> {
    let mut count = 0;
    for (name, slot) in model.linears_mut() {
        let Some(w) = weights.remove(&name) else { continue };
        let LinearSlot::Linear(l) = slot else {
            return Err(LoraError::module(name, "has an adapter; replace the base before injecting LoRA"));
        };
        if w.dims() != (l.out_features(), l.in_features()) {
            return Err(LoraError::shape(
                format!("quantized weight for {name}"),
                format!("[{}, {}]", l.out_features(), l.in_features()),
                &[w.dims().0, w.dims().1],
            ));
        }
        let bias = l.bias.as_ref().map(|b| b.tensor().clone());
        let device = l.weight.tensor().device().clone();
        *slot = LinearSlot::Custom(Box::new(QuantizedLinear::new(w, bias.as_ref(), &device)?));
        count += 1;
    }
    if let Some(name) = weights.keys().next() {
        return Err(LoraError::module(name, "has a quantized weight but no such linear layer in the model"));
    }
    Ok(count)
}

/// Bytes of a model's weights: (quantized linear weights, their f32 size, everything else).
pub fn base_bytes(model: &dyn LoraModel) -> (usize, usize, usize) {
    let (mut quant, mut quant_f32, mut dense) = (0, 0, 0);
    for (_, slot) in model.linears() {
        match slot.kind::<QuantizedLinear>() {
            Some(q) => {
                let (o, i) = q.weight().dims();
                quant += q.weight().storage_bytes();
                quant_f32 += 4 * o * i;
                dense += q.bias().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
            }
            None => {
                if let Ok(w) = slot.base_weight() {
                    dense += w.elem_count() * w.dtype().size_in_bytes();
                }
                dense += slot.base_bias().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
            }
        }
    }
    let quantized = model.quantized_params();
    for (name, p) in model.params() {
        match quantized.iter().find(|(n, _)| *n == name) {
            Some((_, q)) => {
                quant += q.storage_bytes();
                quant_f32 += 4 * p.elem_count();
            }
            None => dense += p.elem_count() * p.tensor().dtype().size_in_bytes(),
        }
    }
    (quant, quant_f32, dense)
}
