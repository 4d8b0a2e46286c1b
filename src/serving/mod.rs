//! Serving several adapters on one base (challenge 2, t10): a batch whose rows each use their
//! own adapter ([`per_row`]).
//!
//! Sits above `lora` and task t10, whose `per_row_lora` is the layer's low-rank part.

pub mod per_row;
