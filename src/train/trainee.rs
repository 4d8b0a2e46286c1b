//! What a training run trains, as the one training loop (task 2.2's `train`) sees it: the
//! parameter groups to optimize, and how the trained weights are saved and loaded back.

use std::path::Path;

use crate::error::Result;
use crate::models::CausalLm;
use crate::train::optim::ParamGroup;

/// What a run trains and how its weights are kept. LoRA's adapters are task 2.2's
/// (`tasks::t06_train::LoraAdapters`); full fine-tuning (`experiments::full::FullTrainee`) and
/// LoRA mixed with fully trained modules (`tasks::t11_mixed::MixedTrainee`) bring their own, and
/// task 2.2's `train` trains them all.
pub trait Trainee {
    /// Make what is trained trainable and return it as the optimizer's parameter groups (each
    /// at its multiple of the learning rate). Called after a resume, which replaces the `Var`s.
    fn groups(&self, model: &mut dyn CausalLm) -> Result<Vec<ParamGroup>>;
    /// Save what is trained into folder `dir` (the best weights; a checkpoint's).
    fn save(&self, model: &dyn CausalLm, dir: &Path) -> Result<()>;
    /// Load it back from `dir`, for a resume.
    fn load(&self, model: &mut dyn CausalLm, dir: &Path) -> Result<()>;
    /// Whether the run keeps `best/` and checkpoints on disk. Full fine-tuning does not: a whole
    /// model is 540 MB a copy.
    fn keeps_files(&self) -> bool {
        true
    }
}
