//! The training loop over parameter groups: `train_lora`'s loop (task 2.2) for any set of
//! trainable weights, each group at its own multiple of the learning rate. Full fine-tuning
//! (the experiments) and LoRA mixed with fully trained modules (t11) run on it, so they see the
//! same batches, schedule, clipping and validation as a LoRA run.

use crate::history::TrainHistory;
use crate::models::CausalLm;
use crate::optim::ParamGroup;
use crate::{LoraError, Result};

/// Train `groups` on `train`, validating on `val` every `cfg.eval_every` steps; `on_best` runs
/// whenever the validation loss is the lowest so far (to save what is being trained). Writes
/// the history (JSON and plot) to `cfg.out_dir`. A NaN loss stops with an error.
pub fn train_groups(
    model: &mut dyn CausalLm,
    groups: Vec<ParamGroup>,
    train: &[crate::Example],
    val: &[crate::Example],
    pad_id: u32,
    cfg: &crate::TrainConfig,
    on_best: &mut dyn FnMut(&mut dyn CausalLm) -> Result<()>,
) -> Result<TrainHistory> {
    use crate::history::{EvalRecord, StepRecord};
    use crate::{causal_lm_loss, clip_grad_norm, collate, evaluate_loss, lr_at};
    if train.is_empty() || val.is_empty() {
        return Err(LoraError::config("dataset", "train and validation sets must both be non-empty"));
    }
    let params =
        crate::optim::AdamWParams { lr: lr_at(&cfg.schedule, 0), weight_decay: cfg.weight_decay, ..Default::default() };
    let mut opt = crate::optim::AdamW::with_groups(groups, params)?;
    let vars: Vec<candle_core::Var> = opt.vars().iter().map(|(_, v)| v.clone()).collect();
    let per_epoch = crate::data::epoch_batches(train.len(), cfg.batch_size, cfg.seed, 0).len();
    let mut history = TrainHistory::default();
    let bar = crate::progress::bar(cfg.schedule.total_steps, 0, cfg.progress);
    for step in 0..cfg.schedule.total_steps {
        let t0 = std::time::Instant::now();
        let lr = lr_at(&cfg.schedule, step);
        opt.set_lr(lr);
        let idx =
            &crate::data::epoch_batches(train.len(), cfg.batch_size, cfg.seed, step / per_epoch)[step % per_epoch];
        let batch: Vec<crate::Example> = idx.iter().map(|&i| train[i].clone()).collect();
        let (loss, tokens) = causal_lm_loss(model, &collate(&batch, pad_id, model.device())?, true)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(LoraError::config("loss", format!("is {value} at step {}; stopped", step + 1)));
        }
        let mut grads = loss.backward()?;
        drop(loss);
        let grad_norm = clip_grad_norm(&mut grads, &vars, cfg.max_grad_norm.unwrap_or(f64::INFINITY))?;
        opt.step(&grads)?;
        let secs = t0.elapsed().as_secs_f64();
        history.train.push(StepRecord {
            step: step + 1,
            loss: value,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / secs,
        });
        bar.set_position((step + 1) as u64);
        if (step + 1) % cfg.eval_every.max(1) == 0 || step + 1 == cfg.schedule.total_steps {
            let val_loss = evaluate_loss(model, val, cfg.batch_size, pad_id)?;
            history.val.push(EvalRecord { step: step + 1, val_loss });
            if history.best.is_none_or(|(_, b)| val_loss < b) {
                history.best = Some((step + 1, val_loss));
                on_best(model)?;
            }
        }
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| LoraError::io(&cfg.out_dir, e))?;
    history.save_json(&cfg.out_dir.join("training_history.json"))?;
    history.plot(&cfg.out_dir.join("training_history.png"))?;
    Ok(history)
}
