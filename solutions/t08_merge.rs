//! Task 3.1 and 3.2: merge the adapters into the base weights, and verify the merge.
//!
//! Hu et al. 2021, section 4.1: "When deployed in production, we can explicitly compute and store
//! W = W0 + BA and perform inference as usual", so LoRA adds no inference latency. Merging turns
//! every adapted slot back into a plain linear layer; `unmerge_lora_weights` takes the update back
//! out (PEFT's `unmerge_adapter`), which is how one base serves several adapters in turn.

use candle_core::{DType, Tensor};

use crate::error::{LoraError, Result};
use crate::lora::linear::Linear;
use crate::lora::model::LoraModel;
use crate::lora::slot::LinearSlot;
use crate::models::CausalLm;
use crate::tasks::t01_lora_layer::LoraLayer;
use crate::tasks::t02_linear_with_lora::LinearWithLora;

/// The adapters a merge removed, by module name, so that `unmerge_lora_weights` can take their
/// updates back out of the weights.
#[derive(Clone, Debug)]
pub struct MergedAdapters {
    pub modules: Vec<(String, LoraLayer)>,
}

// ANCHOR: delta
/// `scaling * B A` [out, in], the weight update an adapter stands for, computed in f32.
pub fn lora_delta(lora: &LoraLayer) -> Result<Tensor> {
    let a = lora.a().tensor().to_dtype(DType::F32)?;
    let b = lora.b().tensor().to_dtype(DType::F32)?;
    Ok((b.matmul(&a)? * lora.scaling())?)
}
// ANCHOR_END: delta

// ANCHOR: merge
/// Replace every adapted slot by a plain frozen linear layer with weight `W + scaling * B A`.
/// Everything is computed and checked first: a model without adapters, or an update that makes a
/// weight NaN or infinite, is an error and changes nothing.
pub fn merge_lora_weights(model: &mut dyn LoraModel) -> Result<MergedAdapters> {
    let mut merged = Vec::new();
    for (name, slot) in model.linears() {
        let Some(lora) = slot.adapter() else { continue };
        // `base_weight` is a dense tensor whatever the slot holds; the merged weight is dense.
        let w = slot.base_weight()?;
        let new_w = (w.to_dtype(DType::F32)? + lora_delta(lora)?)?.to_dtype(w.dtype())?;
        let sum = new_w.to_dtype(DType::F64)?.abs()?.sum_all()?.to_scalar::<f64>()?;
        if !sum.is_finite() {
            return Err(LoraError::module(name, "merging gives a NaN or infinite weight; the model is unchanged"));
        }
        merged.push((name, new_w));
    }
    if merged.is_empty() {
        return Err(LoraError::config("model", "has no LoRA adapters to merge (already merged, or never injected)"));
    }
    let mut out = Vec::new();
    let mut new_weights = merged.into_iter().peekable();
    for (name, slot) in model.linears_mut() {
        if new_weights.peek().is_some_and(|(n, _)| *n == name) {
            let (_, w) = new_weights.next().expect("peeked");
            let lora = slot.adapter().expect("only adapted slots were merged").clone();
            let plain = LinearSlot::Linear(Linear::frozen(&w, slot.base_bias())?);
            out.push((name, lora));
            *slot = plain;
        }
    }
    Ok(MergedAdapters { modules: out })
}
// ANCHOR_END: merge

/// Take merged updates back out: `W = W' - scaling * B A`, and the adapter back in its slot.
pub fn unmerge_lora_weights(model: &mut dyn LoraModel, merged: MergedAdapters) -> Result<()> {
    let mut slots: Vec<(String, &mut LinearSlot)> = model.linears_mut();
    for (name, lora) in merged.modules {
        let Some((_, slot)) = slots.iter_mut().find(|(n, _)| *n == name) else {
            return Err(LoraError::module(name, "does not exist in this model"));
        };
        let LinearSlot::Linear(l) = &**slot else {
            return Err(LoraError::module(name, "has an adapter already; it was not merged"));
        };
        let w = l.weight.tensor();
        let base = (w.to_dtype(DType::F32)? - lora_delta(&lora)?)?.to_dtype(w.dtype())?;
        let bias = l.bias.as_ref().map(|b| b.tensor().clone());
        **slot = LinearSlot::Lora(LinearWithLora::new(&base, bias.as_ref(), lora)?);
    }
    Ok(())
}

/// How far the merged model's outputs are from the adapted model's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MergeReport {
    pub max_abs_diff: f64,
    /// max |merged - adapted| / max |adapted|
    pub max_rel_diff: f64,
    pub tolerance: f64,
    pub passed: bool,
}

// ANCHOR: verify
/// Merge `model`'s adapters and check that its logits on `ids` stay within `tolerance`
/// (absolute) of the adapted model's. If they do not, the merge is undone. Returns the report and
/// what was merged (for a later unmerge).
pub fn verify_merge(model: &mut dyn CausalLm, ids: &Tensor, tolerance: f64) -> Result<(MergeReport, MergedAdapters)> {
    let before = model.forward(ids, None, false)?.to_dtype(DType::F64)?;
    let merged = merge_lora_weights(model)?;
    let after = model.forward(ids, None, false)?.to_dtype(DType::F64)?;
    let max_abs_diff = (&after - &before)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = before.abs()?.max_all()?.to_scalar::<f64>()?.max(f64::MIN_POSITIVE);
    // max_all skips NaN, so finiteness is checked on a sum.
    let finite = after.abs()?.sum_all()?.to_scalar::<f64>()?.is_finite();
    let passed = finite && max_abs_diff <= tolerance;
    let report = MergeReport { max_abs_diff, max_rel_diff: max_abs_diff / scale, tolerance, passed };
    if !passed {
        unmerge_lora_weights(model, merged.clone())?;
    }
    Ok((report, merged))
}
// ANCHOR_END: verify
