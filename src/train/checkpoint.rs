//! The files of a training run besides the history: where the best adapter and the checkpoint
//! live, and how a checkpoint (trained weights, optimizer moments, step and history) is written and read.
//! Also `with_frozen_adapters`, for evaluating without building a backward graph. Task 2.2's
//! training loop uses these; they are not part of the exercise.

use std::path::{Path, PathBuf};

use candle_core::Var;
use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};
use crate::io::{write_atomic, write_dir_atomic};
use crate::lora::param::Param;
use crate::models::CausalLm;
use crate::train::history::TrainHistory;
use crate::train::optim::AdamW;

/// Where a run keeps its best adapter (PEFT's format).
pub fn best_adapter_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("best")
}

/// Where a run keeps the checkpoint it resumes from.
pub fn checkpoint_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoint")
}

const OPTIMIZER_STATE_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// The optimizer's state file inside a checkpoint.
pub(crate) fn optimizer_state_path(out_dir: &Path) -> PathBuf {
    checkpoint_dir(out_dir).join(OPTIMIZER_STATE_FILE)
}

fn state_path(out_dir: &Path) -> PathBuf {
    checkpoint_dir(out_dir).join(STATE_FILE)
}

/// The step a checkpoint was written at and the history so far.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    history: TrainHistory,
}

/// Write a checkpoint of the run in `out_dir`: the trained weights (`save_weights` writes them
/// into the folder it is given), the optimizer's moments, and the step and history, as one
/// folder written as a whole (`write_dir_atomic`): a run killed mid-save resumes from the
/// previous checkpoint or the new one, never from an old step with newer weights.
pub fn save_checkpoint(
    opt: &AdamW,
    step: usize,
    history: &TrainHistory,
    out_dir: &Path,
    save_weights: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let json = serde_json::to_string(&TrainerState { step, history: history.clone() }).expect("state serializes");
    write_dir_atomic(&checkpoint_dir(out_dir), |tmp| {
        save_weights(tmp)?;
        opt.save_state(&tmp.join(OPTIMIZER_STATE_FILE))?;
        write_atomic(&tmp.join(STATE_FILE), json.as_bytes())
    })
}

/// The (step, history) of the checkpoint in `out_dir`, or `None` if there is none.
pub fn read_checkpoint_state(out_dir: &Path) -> Result<Option<(usize, TrainHistory)>> {
    let path = state_path(out_dir);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| LoraError::io(&path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| LoraError::file(&path, format!("is not a trainer state: {e}")))?;
    Ok(Some((state.step, state.history)))
}

/// Run `f` with every adapter frozen (so no graph is built), then give back the same `Var`s, so
/// an optimizer holding them is not disturbed.
pub(crate) fn with_frozen_adapters<R>(model: &mut dyn CausalLm, f: impl FnOnce(&dyn CausalLm) -> R) -> R {
    let mut saved: Vec<Option<Var>> = Vec::new();
    for (_, slot) in model.linears_mut() {
        if let Some(l) = slot.adapter_mut() {
            for p in l.params_mut() {
                saved.push(p.var().cloned());
                p.freeze();
            }
        }
    }
    let out = f(model);
    let mut saved = saved.into_iter();
    for (_, slot) in model.linears_mut() {
        if let Some(l) = slot.adapter_mut() {
            for p in l.params_mut() {
                if let Some(Some(v)) = saved.next() {
                    *p = Param::Trainable(v);
                }
            }
        }
    }
    out
}
