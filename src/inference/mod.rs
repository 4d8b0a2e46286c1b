//! Using a trained model: generation with a KV cache ([`generate`]), BLEU's tokenizer
//! ([`bleu`]), and writing a merged model or an adapter for other tools ([`export`]).
//!
//! May use: `error`, `io`, `compute`, `lora`, `peft`, `models`, task t04 (adapters as PEFT keys,
//! for the export).

pub mod bleu;
pub mod export;
pub mod generate;
