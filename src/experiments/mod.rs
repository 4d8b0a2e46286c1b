//! The experiments of the tutorial (full fine-tuning vs LoRA, target modules, ranks, LoRA+):
//! what a run is and its cached result ([`spec`]), one E2E run end to end ([`run`]), full
//! fine-tuning ([`full`]), the measures of a run ([`metrics`]: BLEU, peak memory) and the
//! report with its table and plots ([`report`]).
//!
//! The top layer: may use everything else.

pub mod full;
pub mod metrics;
pub mod report;
pub mod run;
pub mod spec;
