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
    // TODO: the loop of the book's "The training loop". It must guarantee:
    // - empty train or validation sets are an error;
    // - only what `trainee.groups(model)` returns is optimised, by AdamW with cfg.weight_decay, at
    //   lr_at(step) on every step;
    // - a step accumulates cfg.grad_accum micro-batches, taken in the seeded order of
    //   `epoch_batches` and continuing across epochs (k micro-batches of 1 = one batch of k),
    //   averages their gradients, clips them to cfg.max_grad_norm and steps; its StepRecord holds
    //   the mean loss and the norm before clipping;
    // - before the first step of a fresh run, the validation loss at step 0 (the base model) is
    //   recorded and is the first best, saved as best: weights that never beat it never replace it;
    // - a non-finite loss stops the run with `LoraError::Diverged` (its step, the loss, the peak
    //   learning rate, and which weights are kept);
    // - a `DivergenceGuard::from_history` checks the run (src/train/guard.rs): `after_step` after
    //   every step, `after_eval` after every validation (and saving the best); their error stops
    //   the run, and no checkpoint is written while `guard.suspect()`;
    // - every eval_every steps and after the last: the validation loss; when the trainee keeps
    //   files, the best weights in best_adapter_dir(out_dir) and a checkpoint (`save_checkpoint`);
    //   then on_eval;
    // - with cfg.resume and a checkpoint in out_dir, the run continues from it and ends where an
    //   uninterrupted run would (the trainee's `load` replaces the Vars: the optimizer comes after
    //   it); cfg.stop_after stops early as if interrupted;
    // - training_history.json and .png end up in out_dir, and the history is returned.
    // Book: "The training loop", "Resuming a run", "When the loss is NaN", "When training diverges".
    todo!("t06: train")
}
