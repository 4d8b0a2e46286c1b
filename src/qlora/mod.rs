//! QLoRA (challenge 1, t09): a quantized frozen base with LoRA adapters on top.
//!
//! - [`linear`]: `QuantizedLinear`, a slot kind over a quantized weight, adapter beside it;
//! - [`base`]: quantizing a whole model (`quantize_base`), a GGUF's own blocks
//!   (`use_quantized_weights`), and what the base weighs (`base_bytes`).
//!
//! Sits above `models` and `lora`; task t09 supplies the NF4 format.

pub mod base;
pub mod linear;
