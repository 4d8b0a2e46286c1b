//! # lora-from-scratch
//!
//! LoRA (Hu et al. 2021, arXiv 2106.09685) built from scratch on candle, as a tutorial whose
//! exercises are graded by tests and as a toolkit that reads and writes Hugging Face PEFT
//! adapters.
//!
//! The tasks live twice: `exercises/` holds the stubs a learner fills in, `solutions/` the
//! reference code. Both are compiled in every build; the `exercises` feature only chooses which
//! one the crate's public API (and so every model in `src/`) uses.

pub mod alloc;
pub mod bleu;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod download;
pub mod error;
pub mod experiment;
pub mod experiment_run;
pub mod export;
pub mod fused;
pub mod generate;
pub mod history;
pub mod io;
pub mod linear;
pub mod model;
pub mod models;
pub mod multi;
pub mod ops;
pub mod optim;
pub mod param;
pub mod peft;
pub mod progress;
pub mod quant;
pub mod report;
pub mod tasks;
pub mod threads;
pub mod tokenizer;
pub mod train_groups;

/// The learner's tree: `todo!()` stubs with the same public signatures as [`solutions`].
#[path = "../exercises/mod.rs"]
pub mod exercises;

/// The reference implementation of every task.
#[path = "../solutions/mod.rs"]
pub mod solutions;

pub use config::{LoraConfig, LoraInit, ALL_LINEAR};
pub use error::{LoraError, Result, TensorProblem};
pub use linear::Linear;
pub use model::{LinearSlot, LoraModel};
pub use param::Param;
pub use report::{GradientReport, InjectionReport, InjectionSummary, ParameterCount};

#[cfg(feature = "exercises")]
use exercises as active;
#[cfg(not(feature = "exercises"))]
use solutions as active;

// The tasks' public items, from whichever tree the `exercises` feature selects.
pub use active::t01_lora_layer::*;
pub use active::t02_linear_with_lora::*;
pub use active::t03_inject::*;
pub use active::t04_save_load::*;
pub use active::t05_data::*;
pub use active::t06_train::*;
pub use active::t07_eval::*;
pub use active::t08_merge::*;
pub use active::t09_qlora::*;
pub use active::t10_multi_lora::*;
pub use active::t11_mixed::*;
