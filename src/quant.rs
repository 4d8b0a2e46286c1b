//! A quantized frozen base for QLoRA (Dettmers et al. 2023; challenge 1, t09).
//!
//! [`QuantizedWeight`] is a frozen weight [out, in] stored in fewer bits: NF4 (t09's
//! [`crate::Nf4Tensor`]) or a GGUF block format kept as the file has it (SmolLM2's Q4_1, Q8_0).
//! [`QuantizedLinear`] is a linear layer over one, with an optional f32 LoRA adapter: its forward
//! dequantizes the weight on the fly, one layer at a time ([`crate::ops::quantized_linear`]), and
//! its backward returns the input's gradient, so that adapters below it train. A model's linear
//! layer holds one in [`LinearSlot::Quantized`].

use std::fmt;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::{LinearSlot, LoraError, LoraLayer, LoraModel, Result};

/// A frozen weight [out, in] kept in a quantized form.
pub trait QuantizedWeight: fmt::Debug + Send + Sync {
    /// (out_features, in_features).
    fn dims(&self) -> (usize, usize);
    /// The weight as an f32 tensor [out, in] on `device`.
    fn dequantize(&self, device: &Device) -> Result<Tensor>;
    /// Bytes the quantized form takes.
    fn storage_bytes(&self) -> usize;
    /// The format's name: `nf4`, `q4_1`, `q8_0`, ...
    fn format(&self) -> String;
}

impl QuantizedWeight for crate::Nf4Tensor {
    fn dims(&self) -> (usize, usize) {
        (self.shape()[0], self.shape()[1])
    }

    fn dequantize(&self, device: &Device) -> Result<Tensor> {
        crate::Nf4Tensor::dequantize(self, device)
    }

    fn storage_bytes(&self) -> usize {
        crate::Nf4Tensor::storage_bytes(self)
    }

    fn format(&self) -> String {
        "nf4".into()
    }
}

/// A weight in one of GGUF's block formats, as llama.cpp wrote it.
#[derive(Debug)]
pub struct GgufWeight(pub QTensor);

impl QuantizedWeight for GgufWeight {
    fn dims(&self) -> (usize, usize) {
        let d = self.0.shape().dims();
        (d[0], d[1])
    }

    fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Ok(self.0.dequantize(device)?)
    }

    fn storage_bytes(&self) -> usize {
        self.0.storage_size_in_bytes()
    }

    fn format(&self) -> String {
        format!("{:?}", self.0.dtype()).to_lowercase()
    }
}

impl GgufWeight {
    /// The same weight with its rows reordered: row i of the result is row `order[i]`. GGUF's
    /// block formats quantize along rows, so reordering rows moves whole blocks and is exact.
    pub fn permute_rows(&self, order: &[usize]) -> Result<Self> {
        let (rows, cols) = self.dims();
        let dtype: GgmlDType = self.0.dtype();
        if order.len() != rows || cols % dtype.block_size() != 0 {
            return Err(LoraError::config(
                "GGUF row permutation",
                format!("{} rows of {cols} for {rows}", order.len()),
            ));
        }
        let row_bytes = cols / dtype.block_size() * dtype.type_size();
        let data = self.0.data()?;
        let mut out = Vec::with_capacity(data.len());
        for &r in order {
            out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let storage = candle_core::quantized::QStorage::from_data(out.into(), &Device::Cpu, dtype)?;
        Ok(GgufWeight(QTensor::new(storage, (rows, cols))?))
    }
}

/// A frozen quantized linear layer `x W^T + b`, with an optional f32 LoRA adapter beside it.
#[derive(Clone, Debug)]
pub struct QuantizedLinear {
    weight: Arc<dyn QuantizedWeight>,
    bias: Option<Tensor>,
    adapter: Option<LoraLayer>,
    /// Where the layer computes: the dequantized weight is made here.
    device: Device,
}

impl QuantizedLinear {
    /// A quantized layer; the bias (if any) stays dense and frozen.
    pub fn new(weight: Arc<dyn QuantizedWeight>, bias: Option<&Tensor>, device: &Device) -> Result<Self> {
        let (out_f, _) = weight.dims();
        if let Some(b) = bias {
            if b.dims() != [out_f] {
                return Err(LoraError::shape("quantized linear bias", format!("[{out_f}]"), b.dims()));
            }
        }
        Ok(QuantizedLinear { weight, bias: bias.map(Tensor::detach), adapter: None, device: device.clone() })
    }

    /// `x W^T + b + adapter(x)`; `train` switches the adapter's dropout on.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // As for a dense adapted layer: one fused op on the CPU when no dropout applies, which
        // keeps fewer tensors for the backward. With `--features exercises` the learner's
        // `LoraLayer::forward` runs instead.
        #[cfg(not(feature = "exercises"))]
        if let Some(a) = &self.adapter {
            let (at, bt) = (a.a().tensor(), a.b().tensor());
            let bias_ok = self.bias.as_ref().is_none_or(|b| crate::fused::usable(&[x, b]));
            if !(train && a.dropout() > 0.0) && bias_ok && crate::fused::usable(&[x, at, bt]) {
                let w = crate::fused::FrozenWeight::Quantized(self.weight.clone());
                return Ok(crate::fused::lora_linear::lora_linear_with(x, w, self.bias.as_ref(), at, bt, a.scaling())?);
            }
        }
        let mut y = crate::ops::quantized_linear(x, &self.weight)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(y.dtype())?)?;
        }
        if let Some(a) = &self.adapter {
            y = (y + a.forward(x, train)?.to_dtype(x.dtype())?)?;
        }
        Ok(y)
    }

    /// The quantized weight.
    pub fn weight(&self) -> &Arc<dyn QuantizedWeight> {
        &self.weight
    }

    /// The device the layer computes on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The frozen bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The adapter, if one is attached.
    pub fn adapter(&self) -> Option<&LoraLayer> {
        self.adapter.as_ref()
    }

    /// The adapter, mutably.
    pub fn adapter_mut(&mut self) -> Option<&mut LoraLayer> {
        self.adapter.as_mut()
    }

    /// Attach `lora`, checking that its shapes fit the weight; a layer holds one adapter.
    pub fn set_adapter(&mut self, lora: LoraLayer) -> Result<()> {
        let (out_f, in_f) = self.weight.dims();
        if lora.in_features() != in_f || lora.out_features() != out_f {
            return Err(LoraError::shape(
                "LoRA adapter for the quantized weight",
                format!("in {in_f}, out {out_f}"),
                &[lora.out_features(), lora.in_features()],
            ));
        }
        self.adapter = Some(lora);
        Ok(())
    }

    /// Detach and return the adapter.
    pub fn take_adapter(&mut self) -> Option<LoraLayer> {
        self.adapter.take()
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
            BaseQuantization::Nf4 => Arc::new(crate::Nf4Tensor::quantize(l.weight.tensor())?),
        };
        let bias = l.bias.as_ref().map(|b| b.tensor().clone());
        let device = l.weight.tensor().device().clone();
        *slot = LinearSlot::Quantized(QuantizedLinear::new(weight, bias.as_ref(), &device)?);
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
            BaseQuantization::Nf4 => Arc::new(crate::Nf4Tensor::quantize(&t)?),
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
        *slot = LinearSlot::Quantized(QuantizedLinear::new(w, bias.as_ref(), &device)?);
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
        match slot {
            LinearSlot::Quantized(q) => {
                let (o, i) = q.weight().dims();
                quant += q.weight().storage_bytes();
                quant_f32 += 4 * o * i;
                dense += q.bias().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
            }
            other => {
                if let Ok(w) = other.base_weight() {
                    dense += w.elem_count() * w.dtype().size_in_bytes();
                }
                dense += other.base_bias().map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
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
