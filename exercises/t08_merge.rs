//! Task 3.1 and 3.2: merge the adapters into the base weights, and verify the merge.
//!
//! Hu et al. 2021, section 4.1: "When deployed in production, we can explicitly compute and store
//! W = W0 + BA and perform inference as usual", so LoRA adds no inference latency. Merging turns
//! every adapted slot back into a plain linear layer; `unmerge_lora_weights` takes the update back
//! out (PEFT's `unmerge_adapter`), which is how one base serves several adapters in turn. Read
//! book/src/t08_merge.md beside this file. Grade it with `cargo test --features exercises --test t08_merge`.
#![allow(unused_variables, unused_imports, unused_mut)]

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

/// `scaling * B A` [out, in], the weight update an adapter stands for, computed in f32.
pub fn lora_delta(lora: &LoraLayer) -> Result<Tensor> {
    // TODO: scaling * B A in f32: B [out, r] times A [r, in] gives [out, in], the shape of W.
    // Book: "The update an adapter stands for".
    todo!("t08: lora_delta")
}

/// Replace every adapted slot by a plain frozen linear layer with weight `W + scaling * B A`.
/// Everything is computed and checked first: a model without adapters, or an update that makes a
/// weight NaN or infinite, is an error and changes nothing.
pub fn merge_lora_weights(model: &mut dyn LoraModel) -> Result<MergedAdapters> {
    // TODO: every adapted slot becomes a plain frozen linear (`LinearSlot::Linear`) with weight W +
    // lora_delta (added in f32, stored in W's dtype) and the base's bias; its adapter goes into the
    // returned MergedAdapters under the module's name. Checks first, changes after: every merged
    // weight is computed and found finite before any slot changes; a NaN or infinite one is a
    // `LoraError::module` error naming the module, and a model with no adapter is an error too;
    // either leaves the model unchanged.
    // Book: "Merging".
    todo!("t08: merge_lora_weights")
}

/// Take merged updates back out: `W = W' - scaling * B A`, and the adapter back in its slot.
pub fn unmerge_lora_weights(model: &mut dyn LoraModel, merged: MergedAdapters) -> Result<()> {
    // TODO: for each (name, lora): the module must exist and be a plain Linear (else an error); its
    // weight becomes W' - lora_delta (in f32, back to W's dtype) and the adapter is back beside it
    // in a `LinearWithLora`, with the same bias.
    // Book: "Unmerging".
    todo!("t08: unmerge_lora_weights")
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

/// Merge `model`'s adapters and check that its logits on `ids` stay within `tolerance`
/// (absolute) of the adapted model's. If they do not, the merge is undone. Returns the report and
/// what was merged (for a later unmerge).
pub fn verify_merge(model: &mut dyn CausalLm, ids: &Tensor, tolerance: f64) -> Result<(MergeReport, MergedAdapters)> {
    // TODO: the logits on `ids` of the adapted model and, after `merge_lora_weights`, of the merged
    // one; max_abs_diff = max |after - before|, max_rel_diff = that over max |before|; passed when
    // the merged logits are finite and max_abs_diff <= tolerance. A merge that did not pass is
    // undone.
    // Book: "Verifying a merge".
    todo!("t08: verify_merge")
}
