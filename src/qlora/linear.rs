//! A quantized frozen linear layer for QLoRA (Dettmers et al. 2023; challenge 1, t09).
//!
//! [`QuantizedLinear`] is a linear layer over a [`QuantizedWeight`] (t09's NF4, or a GGUF block
//! format), with an optional f32 LoRA adapter: its forward dequantizes the weight on the fly, one
//! layer at a time ([`crate::compute::ops::quantized_linear`]), and its backward returns the
//! input's gradient, so that adapters below it train. It plugs into a model's
//! [`LinearSlot::Custom`] as a [`CustomLinear`].
//!
//! May use: `compute`, `lora`, tasks t01-t02.

use std::any::Any;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::compute::quantized::QuantizedWeight;
use crate::error::{LoraError, Result};
use crate::lora::param::Param;
use crate::lora::slot::{CustomLinear, LinearSlot};
use crate::tasks::t01_lora_layer::LoraLayer;

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
            let bias_ok = self.bias.as_ref().is_none_or(|b| crate::compute::fused::usable(&[x, b]));
            if !(train && a.dropout() > 0.0) && bias_ok && crate::compute::fused::usable(&[x, at, bt]) {
                let w = crate::compute::fused::FrozenWeight::Quantized(self.weight.clone());
                return Ok(crate::compute::fused::lora_linear::lora_linear_with(
                    x,
                    w,
                    self.bias.as_ref(),
                    at,
                    bt,
                    a.scaling(),
                )?);
            }
        }
        let mut y = crate::compute::ops::quantized_linear(x, &self.weight)?;
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
    pub(crate) fn adapter_mut(&mut self) -> Option<&mut LoraLayer> {
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
    pub(crate) fn take_adapter(&mut self) -> Option<LoraLayer> {
        self.adapter.take()
    }
}

impl CustomLinear for QuantizedLinear {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        QuantizedLinear::forward(self, x, train)
    }

    /// Without an adapter, on the CPU: one fused op that dequantizes the weight and adds the
    /// residual ([`crate::compute::fused::residual_linear`]).
    fn forward_residual(&self, residual: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        use crate::compute::fused;
        let bias_ok = self.bias().is_none_or(|b| fused::usable(&[x, b]));
        if self.adapter().is_none() && bias_ok && fused::usable(&[residual, x]) {
            let w = fused::FrozenWeight::Quantized(self.weight().clone());
            return Ok(fused::residual_linear::residual_linear_with(residual, x, w, self.bias())?);
        }
        Ok((residual + QuantizedLinear::forward(self, x, train)?)?)
    }

    fn adapter(&self) -> Option<&LoraLayer> {
        QuantizedLinear::adapter(self)
    }

    fn adapter_mut(&mut self) -> Option<&mut LoraLayer> {
        QuantizedLinear::adapter_mut(self)
    }

    fn set_adapter(&mut self, lora: LoraLayer) -> Result<()> {
        QuantizedLinear::set_adapter(self, lora)
    }

    fn take_adapter(&mut self) -> Option<LoraLayer> {
        QuantizedLinear::take_adapter(self)
    }

    fn base_weight(&self) -> Result<Tensor> {
        self.weight().dequantize(self.device())
    }

    fn base_bias(&self) -> Option<&Tensor> {
        self.bias()
    }

    fn in_out_features(&self) -> (usize, usize) {
        let (o, i) = self.weight().dims();
        (i, o)
    }

    fn device(&self) -> &Device {
        QuantizedLinear::device(self)
    }

    fn without_adapter(&self) -> Result<LinearSlot> {
        let mut q = self.clone();
        q.take_adapter();
        Ok(LinearSlot::Custom(Box::new(q)))
    }

    fn named_params(&self) -> Vec<(String, Param)> {
        // The quantized weight counts as many parameters as it has entries; it is listed without
        // being dequantized: a frozen stand-in of its shape, one stored zero broadcast.
        let (out_f, in_f) = self.weight().dims();
        let zero = Tensor::zeros((), DType::F32, self.device()).and_then(|z| z.broadcast_as((out_f, in_f)));
        let mut out = vec![("weight".to_string(), Param::Frozen(zero.expect("a broadcast scalar cannot fail")))];
        if let Some(b) = self.bias() {
            out.push(("bias".to_string(), Param::Frozen(b.clone())));
        }
        if let Some(a) = self.adapter() {
            out.push(("lora_A.weight".to_string(), a.a().clone()));
            out.push(("lora_B.weight".to_string(), a.b().clone()));
        }
        out
    }

    fn why_not_plain(&self) -> Option<&'static str> {
        // A quantized base alone is exported dequantized (f32); an adapter beside it is not.
        self.adapter().map(|_| "still has a LoRA adapter; merge it (merge_lora_weights)")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn box_clone(&self) -> Box<dyn CustomLinear> {
        Box::new(self.clone())
    }
}
