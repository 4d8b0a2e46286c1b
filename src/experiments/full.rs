//! Full fine-tuning, the experiments' baseline: every weight trainable, trained by the same loop
//! as LoRA.

use std::path::Path;

use crate::error::{LoraError, Result};
use crate::models::CausalLm;
use crate::tasks::t05_data::Example;
use crate::tasks::t06_train::{train, TrainConfig};
use crate::train::history::TrainHistory;
use crate::train::optim::ParamGroup;
use crate::train::trainee::Trainee;

/// Make every weight of `model` trainable (full fine-tuning) and return them all as named `Var`s.
pub fn unfreeze_all(model: &mut dyn CausalLm) -> Result<Vec<(String, candle_core::Var)>> {
    if let Some((name, _)) = model.quantized_params().first() {
        return Err(LoraError::config("full fine-tuning", format!("`{name}` is quantized; start from a dense model")));
    }
    let mut vars = Vec::new();
    for (name, slot) in model.linears_mut() {
        let why = match slot.why_not_plain() {
            Some(why) => why,
            None if slot.kind::<crate::qlora::linear::QuantizedLinear>().is_some() => "is quantized",
            None => "",
        };
        let crate::lora::slot::LinearSlot::Linear(l) = slot else {
            return Err(LoraError::config("full fine-tuning", format!("`{name}` {why}; start from a plain model")));
        };
        unfreeze_in_f32(&mut l.weight)?;
        vars.push((format!("{name}.weight"), l.weight.var().expect("just unfrozen").clone()));
        if let Some(b) = &mut l.bias {
            unfreeze_in_f32(b)?;
            vars.push((format!("{name}.bias"), b.var().expect("just unfrozen").clone()));
        }
    }
    for (name, p) in model.params_mut() {
        unfreeze_in_f32(p)?;
        vars.push((name, p.var().expect("just unfrozen").clone()));
    }
    Ok(vars)
}

/// Every weight of the model, trained in full: one parameter group, nothing kept on disk (a full
/// model is 540 MB a copy; the sweep reruns an interrupted run instead).
pub(crate) struct FullTrainee;

impl Trainee for FullTrainee {
    fn groups(&self, model: &mut dyn CausalLm) -> Result<Vec<ParamGroup>> {
        Ok(vec![ParamGroup { name: "all".into(), vars: unfreeze_all(model)?, lr_scale: 1.0 }])
    }

    fn save(&self, _model: &dyn CausalLm, _dir: &Path) -> Result<()> {
        Ok(())
    }

    fn load(&self, _model: &mut dyn CausalLm, dir: &Path) -> Result<()> {
        Err(LoraError::file(dir, "full fine-tuning keeps no checkpoint to resume from"))
    }

    fn keeps_files(&self) -> bool {
        false
    }
}

/// Full fine-tuning with the same loop as `train_lora` (task 2.2): AdamW over every weight, the
/// same batch order, schedule, clipping and validation, so a sweep compares like with like.
pub fn train_full(
    model: &mut dyn CausalLm,
    train_set: &[Example],
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
) -> Result<TrainHistory> {
    train(model, &FullTrainee, train_set, val, pad_id, cfg, &mut |_, _| {})
}

/// Unfreeze `p`, in f32 if it is a half-precision weight on the CPU: the f32 master copy of
/// mixed-precision training. Under `--bf16` the CPU's activations are f32, and AdamW's small
/// updates would round away in bf16's 8-bit mantissa; the memory bf16 saved is spent again on
/// exactly the weights being trained.
fn unfreeze_in_f32(p: &mut crate::lora::param::Param) -> Result<()> {
    use candle_core::DType;
    if let crate::lora::param::Param::Frozen(t) = p {
        if t.device().is_cpu() && matches!(t.dtype(), DType::BF16 | DType::F16) {
            *p = crate::lora::param::Param::Frozen(t.to_dtype(DType::F32)?);
        }
    }
    p.unfreeze()
}
