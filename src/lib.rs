//! # lora-from-scratch
//!
//! LoRA (Hu et al. 2021, arXiv 2106.09685) built from scratch on candle, as a tutorial whose
//! exercises are graded by tests and as a toolkit that reads and writes Hugging Face PEFT
//! adapters.
//!
//! The tasks live twice: `exercises/` holds the stubs a learner fills in, `solutions/` the
//! reference code. Both are compiled in every build; the `exercises` feature only chooses which
//! one [`tasks`] (and so every model and tool in this crate) uses.
//!
//! The folders are layers; each may use the ones listed before it, and each folder's `mod.rs`
//! says which. A task sits where its code is first needed: t01-t02 (the adapter a slot holds)
//! under `lora::slot`, t03-t08 above `lora`, `peft`, `models` and `train`, the challenges'
//! t09-t11 under `qlora`, `serving` and `experiments`. `tests/layout.rs` checks, file by file,
//! that no module imports another in a circle.
//!
//! | module | holds |
//! |---|---|
//! | [`error`], [`io`] | the error type; atomic file writes and checksums |
//! | [`fetch`] | every download (Hub, PyPI wheels, E2E's release) and the offline cache |
//! | [`compute`] | ops with their backward, fused CPU kernels, quantized weight formats, threads |
//! | [`lora`] | `Param`, `Linear`, `LinearSlot`, `LoraModel`, `LoraConfig`, reports |
//! | [`peft`] | PEFT's on-disk format: keys, config, adapter tensors, files |
//! | [`models`] | GPT-2, Llama (SmolLM2), the test model, loaders, tokenizers |
//! | [`train`] | data, AdamW, history, checkpoints, the progress bar |
//! | [`inference`] | generation, BLEU, export |
//! | [`qlora`], [`serving`] | slot kinds and tools of the challenges (t09, t10) |
//! | [`experiments`] | run specs, runs, metrics and reports of the experiments |
//! | [`tasks`] | the learner's tasks t01-t11, from `exercises/` or `solutions/`, their manifest and the reader's language (English or Chinese) |

pub mod compute;
pub mod error;
pub mod experiments;
pub mod fetch;
pub mod inference;
pub mod io;
pub mod lora;
pub mod models;
pub mod peft;
pub mod qlora;
pub mod serving;
pub mod tasks;
pub mod train;

/// The learner's tree: `todo!()` stubs with the same public signatures as [`solutions`].
#[path = "../exercises/mod.rs"]
pub mod exercises;

/// The reference implementation of every task.
#[path = "../solutions/mod.rs"]
pub mod solutions;

// The core types, for users of the library (the crate's own code names their modules).
pub use error::{LoraError, Result, TensorProblem};
pub use lora::config::{LoraConfig, LoraInit, ALL_LINEAR};
pub use lora::linear::Linear;
pub use lora::model::LoraModel;
pub use lora::param::Param;
pub use lora::report::{GradientReport, InjectionReport, InjectionSummary, ParameterCount};
pub use lora::slot::{CustomLinear, LinearSlot};
