//! Task 2.2: `train_lora`, the fine-tuning loop.
//!
//! The pieces every careful training loop has (nanoGPT's `train.py`, transformers' `Trainer`):
//! only the adapter `Var`s go to AdamW; the learning rate warms up linearly, then decays along a
//! cosine; the global gradient norm is clipped; gradients of several micro-batches can be
//! accumulated; the validation loss is measured at an interval and the best adapter is kept; a
//! checkpoint (adapter, optimizer moments, step) lets an interrupted run resume exactly; and a NaN
//! loss stops the run with an error instead of training on garbage. The loop is written once,
//! for any [`Trainee`]: what a run trains and how it is saved.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{LoraError, Result};
use crate::lora::config::LoraConfig;
use crate::models::CausalLm;
use crate::tasks::t03_inject::get_lora_parameters;
use crate::tasks::t04_save_load::{load_lora_weights, save_lora_weights};
use crate::tasks::t05_data::{collate, Batch, Example, IGNORE_INDEX};
use crate::train::checkpoint::{
    best_adapter_dir, checkpoint_dir, optimizer_state_path, read_checkpoint_state, save_checkpoint,
    with_frozen_adapters,
};
use crate::train::data::epoch_batches;
use crate::train::guard::DivergenceGuard;
use crate::train::history::{EvalRecord, StepRecord, TrainHistory};
use crate::train::optim::{AdamW, AdamWParams, ParamGroup};
use crate::train::trainee::Trainee;

/// How the learning rate decays after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

/// The learning-rate schedule over `total_steps` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
    /// The decay ends at `peak_lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
}

// ANCHOR: lr_at
/// The learning rate of step `step` (0-based): `peak * (step + 1) / warmup` during warmup, then
/// from `peak` down to `peak * min_lr_ratio` by the decay rule, reached at the last step.
pub fn lr_at(s: &Schedule, step: usize) -> f64 {
    if step < s.warmup_steps {
        return s.peak_lr * (step + 1) as f64 / s.warmup_steps as f64;
    }
    let min = s.peak_lr * s.min_lr_ratio;
    let span = s.total_steps.saturating_sub(s.warmup_steps + 1).max(1) as f64;
    let p = ((step - s.warmup_steps) as f64 / span).min(1.0);
    match s.decay {
        Decay::Cosine => min + (s.peak_lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        Decay::Linear => s.peak_lr - (s.peak_lr - min) * p,
        Decay::Constant => s.peak_lr,
    }
}
// ANCHOR_END: lr_at

// ANCHOR: clip
/// Scale every gradient by `max_norm / norm` when the global norm (over all `vars`) exceeds
/// `max_norm`, as `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sum = 0.0;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    let norm = sum.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}
// ANCHOR_END: clip

// ANCHOR: loss
/// Mean cross-entropy of next-token prediction over the supervised positions of `batch`, and
/// how many there are. The hidden state at position t predicts the label at t + 1; the output
/// head (49k columns for SmolLM2) runs only on the positions whose label is not ignored.
pub fn causal_lm_loss(model: &dyn CausalLm, batch: &Batch, train: bool) -> Result<(Tensor, usize)> {
    let hidden = model.forward_hidden(&batch.input_ids, None, train)?;
    let (b, t, d) = hidden.dims3()?;
    let labels: Vec<i64> = batch.labels.narrow(1, 1, t - 1)?.flatten_all()?.to_vec1()?;
    let (rows, targets): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .map(|(i, &l)| ((i / (t - 1)) as u32 * t as u32 + (i % (t - 1)) as u32, l as u32))
        .unzip();
    if rows.is_empty() {
        return Err(LoraError::input("batch", "has no supervised tokens (every label is ignored)"));
    }
    let device = hidden.device();
    let picked = hidden.reshape((b * t, d))?.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
    // The head and the loss in one: at a 49k vocabulary the [rows, vocab] logits would be the
    // largest tensor of the step, and `head_loss` never holds them whole.
    let loss = model.head_loss(&picked, &targets)?;
    Ok((loss, rows.len()))
}
// ANCHOR_END: loss

/// Everything `train_lora` needs besides the model and the data.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub schedule: Schedule,
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this; `None` does not clip.
    pub max_grad_norm: Option<f64>,
    pub weight_decay: f64,
    /// Validate (and checkpoint) every this many steps, and after the last.
    pub eval_every: usize,
    /// Where `best/`, `checkpoint/`, `training_history.json` and `.png` go.
    pub out_dir: PathBuf,
    /// Seed of the batch order.
    pub seed: u64,
    /// Continue from `out_dir/checkpoint` if it exists.
    pub resume: bool,
    /// Stop after this many steps as if interrupted (tests, and `--stop-after`).
    pub stop_after: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
}

impl TrainConfig {
    /// Micro-batches per optimizer step: `grad_accum`, and at least one.
    pub fn micro_batches(&self) -> usize {
        self.grad_accum.max(1)
    }
}

// ANCHOR: eval_loss
/// Token-weighted mean loss over `examples`, with the adapters frozen so no graph is built.
pub fn evaluate_loss(model: &mut dyn CausalLm, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<f64> {
    with_frozen_adapters(model, |m| {
        let (mut total, mut count) = (0.0, 0usize);
        for chunk in examples.chunks(batch_size.max(1)) {
            let batch = collate(chunk, pad_id, m.device())?;
            let (loss, n) = causal_lm_loss(m, &batch, false)?;
            total += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            count += n;
        }
        Ok(total / count.max(1) as f64)
    })
}
// ANCHOR_END: eval_loss

/// LoRA's adapters: one group of every adapter's A and B, saved in PEFT's format.
pub struct LoraAdapters<'a>(pub &'a LoraConfig);

impl Trainee for LoraAdapters<'_> {
    fn groups(&self, model: &mut dyn CausalLm) -> Result<Vec<ParamGroup>> {
        Ok(vec![ParamGroup { name: "lora".into(), vars: get_lora_parameters(model), lr_scale: 1.0 }])
    }

    fn save(&self, model: &dyn CausalLm, dir: &Path) -> Result<()> {
        save_lora_weights(model, self.0, dir)
    }

    fn load(&self, model: &mut dyn CausalLm, dir: &Path) -> Result<()> {
        load_lora_weights(model, dir).map(|_| ())
    }
}

/// Train the adapters of `model` on `train`, validating on `val`: [`train`] with
/// [`LoraAdapters`]. The best adapter is in `out_dir/best`.
pub fn train_lora(
    model: &mut dyn CausalLm,
    lora: &LoraConfig,
    train_set: &[Example],
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
    on_eval: &mut dyn FnMut(&dyn CausalLm, usize),
) -> Result<TrainHistory> {
    train(model, &LoraAdapters(lora), train_set, val, pad_id, cfg, on_eval)
}

// ANCHOR: state
/// What a run carries from one optimizer step to the next.
pub struct TrainState {
    /// AdamW over the trainee's parameter groups.
    pub opt: AdamW,
    /// The trained `Var`s, in the optimizer's order.
    pub vars: Vec<Var>,
    /// Every step's record, every validation, and the best so far.
    pub history: TrainHistory,
    /// The divergence checks (src/train/guard.rs).
    pub guard: DivergenceGuard,
    /// Optimizer steps done: 0 for a fresh run, the checkpoint's step for a resumed one, so the
    /// next step to run is `step` (0-based).
    pub step: usize,
}
// ANCHOR_END: state

// ANCHOR: start_run
/// The state a run starts from. With `cfg.resume` and a checkpoint in `out_dir`: the trainee's
/// weights, the optimizer's moments, the step and the history of the checkpoint. Otherwise a
/// fresh AdamW over `trainee.groups(model)`, and the validation loss of the starting point
/// recorded at step 0 as the first best, saved as best when the trainee keeps files.
pub fn start_run(
    model: &mut dyn CausalLm,
    trainee: &dyn Trainee,
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
) -> Result<TrainState> {
    let params = AdamWParams { lr: lr_at(&cfg.schedule, 0), weight_decay: cfg.weight_decay, ..Default::default() };
    let mut history = TrainHistory::default();
    let mut step = 0;
    if let Some(state) = if cfg.resume { read_checkpoint_state(&cfg.out_dir)? } else { None } {
        // Loading replaces the trained Vars, so the optimizer is built after it.
        trainee.load(model, &checkpoint_dir(&cfg.out_dir))?;
        (step, history) = state;
    }
    let mut opt = AdamW::with_groups(trainee.groups(model)?, params)?;
    if step > 0 {
        opt.load_state(&optimizer_state_path(&cfg.out_dir))?;
    }
    let vars: Vec<Var> = opt.vars().iter().map(|(_, v)| v.clone()).collect();
    if step == 0 {
        // The starting point is the first best (for LoRA, B = 0: the base model), saved as such,
        // so weights that never beat it never replace it. (A resumed run's history has its
        // checkpoint's validation.)
        let val_loss = evaluate_loss(model, val, cfg.batch_size, pad_id)?;
        history.val.push(EvalRecord { step: 0, val_loss });
        history.best = Some((0, val_loss));
        if trainee.keeps_files() {
            trainee.save(model, &best_adapter_dir(&cfg.out_dir))?;
        }
    }
    let guard = DivergenceGuard::from_history(cfg.schedule.peak_lr, &history);
    Ok(TrainState { opt, vars, history, guard, step })
}
// ANCHOR_END: start_run

// ANCHOR: accumulate
/// The gradient of optimizer step `step` (0-based): the mean over `cfg.micro_batches()`
/// consecutive micro-batches of the seeded order (`epoch_batches`, continuing across epochs),
/// each loss divided by their number before its backward. Returns the gradient of each of `vars`
/// that got one, the step's mean loss and its supervised tokens. A non-finite loss is
/// `LoraError::Diverged` at step `step + 1`.
pub fn accumulate_gradients(
    model: &dyn CausalLm,
    trainee: &dyn Trainee,
    vars: &[Var],
    train_set: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
    step: usize,
) -> Result<(GradStore, f64, usize)> {
    let k = cfg.micro_batches();
    let per_epoch = epoch_batches(train_set.len(), cfg.batch_size, cfg.seed, 0).len();
    // Gradients summed over the micro-batches, one per Var.
    let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut last: Option<GradStore> = None;
    let (mut loss_sum, mut tokens) = (0.0, 0);
    for j in 0..k {
        let micro = step * k + j;
        let idx = &epoch_batches(train_set.len(), cfg.batch_size, cfg.seed, micro / per_epoch)[micro % per_epoch];
        let batch: Vec<Example> = idx.iter().map(|&i| train_set[i].clone()).collect();
        let (loss, n) = causal_lm_loss(model, &collate(&batch, pad_id, model.device())?, true)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            let kept = match trainee.keeps_files() {
                true => format!("the best weights so far are in {}", best_adapter_dir(&cfg.out_dir).display()),
                false => "no weights were kept".to_string(),
            };
            return Err(LoraError::Diverged {
                step: step + 1,
                loss: value,
                peak_lr: cfg.schedule.peak_lr,
                what: format!("the loss is {value} at step {}", step + 1),
                kept,
            });
        }
        loss_sum += value;
        tokens += n;
        let g = (loss / k as f64)?.backward()?;
        for (sum, v) in acc.iter_mut().zip(vars) {
            if let Some(gv) = g.get(v.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(prev) => (prev + gv)?,
                    None => gv.clone(),
                });
            }
        }
        last = Some(g);
    }
    // candle cannot make an empty GradStore; reuse the last one with the sums put in.
    let mut grads = last.expect("at least one micro-batch ran");
    for (sum, v) in acc.into_iter().zip(vars) {
        match sum {
            Some(t) => grads.insert(v.as_tensor(), t),
            None => grads.remove(v.as_tensor()),
        };
    }
    Ok((grads, loss_sum / k as f64, tokens))
}
// ANCHOR_END: accumulate

// ANCHOR: optimizer_step
/// Step the optimizer once with the accumulated `grads` of step `state.step` (0-based): at
/// `lr_at(step)`, on the gradient clipped to `cfg.max_grad_norm`. The guard's `after_step` checks
/// the step (its error stops the run); its record (the mean `loss`, the rate, the norm before
/// clipping, the `tokens` and their speed since `started`) joins the history, and `state.step`
/// counts it. Returns the record.
pub fn optimizer_step(
    state: &mut TrainState,
    mut grads: GradStore,
    loss: f64,
    tokens: usize,
    cfg: &TrainConfig,
    started: Instant,
) -> Result<StepRecord> {
    let lr = lr_at(&cfg.schedule, state.step);
    state.opt.set_lr(lr);
    let grad_norm = clip_grad_norm(&mut grads, &state.vars, cfg.max_grad_norm.unwrap_or(f64::INFINITY))?;
    state.opt.step(&grads)?;
    state.step += 1;
    state.guard.after_step(state.step, loss, grad_norm, state.history.best)?;
    let record = StepRecord {
        step: state.step,
        loss,
        lr,
        grad_norm,
        tokens,
        tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64(),
    };
    state.history.train.push(record.clone());
    Ok(record)
}
// ANCHOR_END: optimizer_step

// ANCHOR: validate
/// Validate after `state.step` steps: the validation loss joins the history; below the best, it
/// is the new best, saved to `best_adapter_dir` when the trainee keeps files. Then the guard's
/// `after_eval` checks it (its error stops the run), and, unless the guard finds the run
/// suspect, a checkpoint is written when the trainee keeps files. Returns the validation loss.
pub fn validate_and_keep_best(
    model: &mut dyn CausalLm,
    trainee: &dyn Trainee,
    state: &mut TrainState,
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
) -> Result<f64> {
    let step = state.step;
    let val_loss = evaluate_loss(model, val, cfg.batch_size, pad_id)?;
    state.history.val.push(EvalRecord { step, val_loss });
    let best = state.history.best.is_none_or(|(_, b)| val_loss < b);
    if best {
        state.history.best = Some((step, val_loss));
    }
    if trainee.keeps_files() && best {
        trainee.save(model, &best_adapter_dir(&cfg.out_dir))?;
    }
    // A run that diverges stops here; while it may be diverging (one validation far above the
    // best) it writes no checkpoint, so the last good one stays.
    state.guard.after_eval(step, val_loss, state.history.best)?;
    if trainee.keeps_files() && !state.guard.suspect() {
        save_checkpoint(&state.opt, step, &state.history, &cfg.out_dir, |dir| trainee.save(model, dir))?;
    }
    Ok(val_loss)
}
// ANCHOR_END: validate

// ANCHOR: train
/// Train what `trainee` names on `train_set`, validating on `val`. `on_eval` runs after each
/// validation (for sample generations). Returns the history; the best weights are in
/// `out_dir/best` when the trainee keeps files.
pub fn train(
    model: &mut dyn CausalLm,
    trainee: &dyn Trainee,
    train_set: &[Example],
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
    on_eval: &mut dyn FnMut(&dyn CausalLm, usize),
) -> Result<TrainHistory> {
    if train_set.is_empty() || val.is_empty() {
        return Err(LoraError::input("dataset", "train and validation sets must both be non-empty"));
    }
    let mut state = start_run(model, trainee, val, pad_id, cfg)?;
    let total = cfg.schedule.total_steps;
    let end = total.min(cfg.stop_after.unwrap_or(usize::MAX));
    let bar = crate::train::progress_bar::bar(total, state.step, cfg.progress);
    while state.step < end {
        let started = Instant::now();
        let (grads, loss, tokens) =
            accumulate_gradients(model, trainee, &state.vars, train_set, pad_id, cfg, state.step)?;
        let record = optimizer_step(&mut state, grads, loss, tokens, cfg, started)?;
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {loss:.3}  lr {:.2e}  {:.0} tok/s", record.lr, record.tokens_per_s));
        if state.step % cfg.eval_every.max(1) == 0 || state.step == total {
            let val_loss = validate_and_keep_best(model, trainee, &mut state, val, pad_id, cfg)?;
            bar.println(format!("step {}: train loss {loss:.4}, validation loss {val_loss:.4}", state.step));
            on_eval(model, state.step);
        }
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| LoraError::io(&cfg.out_dir, e))?;
    state.history.save_json(&cfg.out_dir.join("training_history.json"))?;
    state.history.plot(&cfg.out_dir.join("training_history.png"))?;
    Ok(state.history)
}
// ANCHOR_END: train
