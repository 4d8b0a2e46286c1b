//! The experiments of the tutorial (full fine-tuning vs LoRA, target modules, ranks, LoRA+):
//! what a run is and its cached result ([`spec`]), one E2E run end to end ([`run`]), full
//! fine-tuning ([`full`]), what a run is measured by ([`e2e_bleu`], [`memory`]: peak RSS) and
//! the report with its table and plots ([`report`]); the seed's own evaluation on held-out
//! prompts, before and after ([`heldout`]).
//!
//! The top layer: may use everything else.

pub mod e2e_bleu;
pub mod full;
pub mod heldout;
pub mod memory;
pub mod report;
pub mod run;
pub mod spec;
