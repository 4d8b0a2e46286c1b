//! Hugging Face PEFT's on-disk format for LoRA adapters, in two layers: the names and the config
//! ([`format`](mod@format): keys `base_model.model.<module>.lora_A.weight`, `adapter_config.json`'s fields)
//! and the folder as files ([`file`](mod@file): keyed tensors written atomically with checksums, read back
//! with every check). Task 1.4 maps a model's adapters to keyed tensors and back.
//!
//! May use: `error`, `io`, `lora::config`.

pub mod file;
pub mod format;
