//! The LoRA core types that the tasks build on: a weight that is frozen or trainable
//! ([`param`]), a plain linear layer ([`linear`]), the slot a model keeps each linear layer in
//! ([`slot`]), the trait through which a model lists its layers ([`model`]), the adapter's
//! configuration ([`config`]) and the reports of injection and gradients ([`report`]).
//!
//! May use: `error`, `compute`, tasks t01-t02 (the adapter a slot holds).

pub mod config;
pub mod linear;
pub mod model;
pub mod param;
pub mod report;
pub mod slot;
