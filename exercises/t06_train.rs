//! Task 2.2: `train_lora`, the fine-tuning loop.
//!
//! The pieces every careful training loop has (nanoGPT's `train.py`, transformers' `Trainer`):
//! only the adapter `Var`s go to AdamW; the learning rate warms up linearly, then decays along a
//! cosine; the global gradient norm is clipped; gradients of several micro-batches can be
//! accumulated; the validation loss is measured at an interval and the best adapter is kept; a
//! checkpoint (adapter, optimizer moments, step) lets an interrupted run resume exactly; and a NaN
//! loss stops the run with an error instead of training on garbage. Read book/src/t06_train.md
//! beside this file. Grade it with `cargo test --features exercises --test t06_train`.
#![allow(unused_variables, unused_imports, unused_mut, dead_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::compute::ops::cross_entropy;
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

/// The learning rate of step `step` (0-based): `peak * (step + 1) / warmup` during warmup, then
/// from `peak` down to `peak * min_lr_ratio` by the decay rule, reached at the last step.
pub fn lr_at(s: &Schedule, step: usize) -> f64 {
    // TODO: the rate of step `step` (0-based): a linear warmup reaching peak_lr at the last of the
    // warmup_steps, then the decay (Cosine, Linear or Constant) from peak_lr at the first step
    // after warmup down to peak_lr * min_lr_ratio at the last step (total_steps - 1), never rising.
    // Book: "The learning-rate schedule" (the formulas).
    todo!("t06: lr_at")
}

/// Scale every gradient by `max_norm / norm` when the global norm (over all `vars`) exceeds
/// `max_norm`, as `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    // TODO: the global L2 norm over the gradients of all `vars` (a var with no gradient adds
    // nothing); when it exceeds max_norm, every gradient in `grads` is multiplied by max_norm /
    // (norm + 1e-6), one factor for all, so the direction is kept. Returns the norm before
    // clipping.
    // Book: "Clipping the gradient".
    todo!("t06: clip_grad_norm")
}

/// Mean cross-entropy of next-token prediction over the supervised positions of `batch`, and
/// how many there are. The hidden state at position t predicts the label at t + 1; the output
/// head (49k columns for SmolLM2) runs only on the positions whose label is not ignored.
pub fn causal_lm_loss(model: &dyn CausalLm, batch: &Batch, train: bool) -> Result<(Tensor, usize)> {
    // TODO: the mean cross-entropy of next-token prediction over the supervised pairs of the batch
    // (the hidden state at position t against the label at t + 1, the label not IGNORE_INDEX), and
    // the number of those pairs. The output head runs on the supervised positions only, never on
    // all [b, t] of them; padding never changes the loss. A batch with no supervised pair is an
    // error.
    // Book: "The loss of a causal LM".
    todo!("t06: causal_lm_loss")
}

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

/// Token-weighted mean loss over `examples`, with the adapters frozen so no graph is built.
pub fn evaluate_loss(model: &mut dyn CausalLm, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<f64> {
    // TODO: the token-weighted mean of `causal_lm_loss` over `examples`, taken in batches of
    // batch_size: sum(loss * n) / sum(n), a mean over tokens, not over batches. No graph is built
    // (the adapters are frozen meanwhile, see `with_frozen_adapters`), and the same trainable
    // `Var`s are in place afterwards.
    // Book: "Validation without a graph".
    todo!("t06: evaluate_loss")
}

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

/// The state a run starts from: resumed from the checkpoint, or fresh with step 0 validated.
pub fn start_run(
    model: &mut dyn CausalLm,
    trainee: &dyn Trainee,
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
) -> Result<TrainState> {
    // TODO: the state the loop of "The training loop" starts from. It must guarantee:
    // - with cfg.resume and a checkpoint in out_dir (`read_checkpoint_state`): the trainee's
    //   weights loaded from `checkpoint_dir` by `trainee.load`, which replaces the `Var`s, so the
    //   optimizer is built after it; the optimizer's moments (`optimizer_state_path`), the step
    //   and the history are the checkpoint's;
    // - otherwise: step 0, and the validation loss of the model as it starts recorded at step 0
    //   and made the first best, saved to best_adapter_dir(out_dir) when the trainee keeps files;
    // - the optimizer is AdamW over exactly `trainee.groups(model)`, with cfg.weight_decay; `vars`
    //   are its `Var`s in its order;
    // - the guard is `DivergenceGuard::from_history` of the history it starts with.
    // Book: "The training loop", "Resuming a run".
    todo!("t06: start_run")
}

/// The mean gradient of one optimizer step over its micro-batches, its mean loss and tokens.
pub fn accumulate_gradients(
    model: &dyn CausalLm,
    trainee: &dyn Trainee,
    vars: &[Var],
    train_set: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
    step: usize,
) -> Result<(GradStore, f64, usize)> {
    // TODO: the gradient of optimizer step `step` (0-based). It must guarantee:
    // - the step takes cfg.micro_batches() micro-batches, the consecutive batches
    //   step * k .. step * k + k of the seeded order `epoch_batches(len, batch_size, seed, epoch)`,
    //   continuing across epochs (k micro-batches of 1 = one batch of k);
    // - each micro-batch's loss (`causal_lm_loss`, in training mode) is divided by k before its
    //   backward, so the returned gradient of each of `vars` is the mean over the micro-batches,
    //   not their sum; a `Var` no micro-batch reaches has no gradient;
    // - it returns that gradient, the mean of the micro-batches' losses, and their supervised
    //   tokens summed;
    // - a non-finite loss stops the run with `LoraError::Diverged` at step `step + 1` (its loss,
    //   the peak learning rate, and which weights are kept: best_adapter_dir when the trainee
    //   keeps files).
    // Book: "The training loop", "When the loss is NaN".
    todo!("t06: accumulate_gradients")
}

/// One optimizer step with the accumulated gradient; its record joins the history.
pub fn optimizer_step(
    state: &mut TrainState,
    grads: GradStore,
    loss: f64,
    tokens: usize,
    cfg: &TrainConfig,
    started: Instant,
) -> Result<StepRecord> {
    // TODO: step number state.step (0-based). It must guarantee:
    // - the optimizer steps once, at lr_at(step), on the gradient clipped to cfg.max_grad_norm
    //   (`None`: not clipped);
    // - state.step counts the step; then `state.guard.after_step` checks it (with the history's
    //   best), and its error stops the run;
    // - the record (the step counted from 1, `loss`, the rate, the norm before clipping, `tokens`
    //   and tokens per second since `started`) is appended to the history and returned.
    // Book: "The learning-rate schedule", "Clipping the gradient", "When training diverges".
    todo!("t06: optimizer_step")
}

/// Validate after `state.step` steps and keep the best; returns the validation loss.
pub fn validate_and_keep_best(
    model: &mut dyn CausalLm,
    trainee: &dyn Trainee,
    state: &mut TrainState,
    val: &[Example],
    pad_id: u32,
    cfg: &TrainConfig,
) -> Result<f64> {
    // TODO: the validation after state.step steps. It must guarantee:
    // - the validation loss (`evaluate_loss`) is recorded in the history at state.step;
    // - a loss below the best so far is the new best, saved to best_adapter_dir(out_dir) when the
    //   trainee keeps files; a loss that is not below it saves nothing;
    // - then `state.guard.after_eval` checks it, and its error stops the run;
    // - then, when the trainee keeps files and the guard is not `suspect()`, a checkpoint
    //   (`save_checkpoint`) of the optimizer, the step and the history.
    // Book: "The training loop", "Resuming a run", "When training diverges".
    todo!("t06: validate_and_keep_best")
}

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
    // TODO: the loop of "The training loop", made of the four steps above. It must guarantee:
    // - empty train or validation sets are an error;
    // - the run starts from `start_run` and takes steps until cfg.schedule.total_steps (or
    //   cfg.stop_after, which stops early as if interrupted): `accumulate_gradients`, then
    //   `optimizer_step`;
    // - after every eval_every-th step and after the last: `validate_and_keep_best`, then
    //   on_eval(model, steps done);
    // - training_history.json and .png end up in out_dir, and the history is returned.
    // Book: "The training loop".
    todo!("t06: train")
}
