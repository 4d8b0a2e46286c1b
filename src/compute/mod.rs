//! The numerical layer, with no notion of LoRA: every op the models' forward passes use, each
//! with a backward ([`ops`]), the same ops fused for the CPU with hand-written backward passes
//! ([`fused`]), weights kept in quantized formats ([`quantized`]), and the process settings a
//! fast CPU step needs ([`threads`], [`alloc`], [`device`]).
//!
//! May use: `error` only.

pub mod alloc;
pub mod bf16;
pub mod device;
pub mod fused;
pub mod host;
pub mod matmul;
pub mod ops;
pub mod quantized;
pub mod threads;
