//! Using a trained model: generation with a KV cache ([`generate`]), BLEU's tokenizer
//! ([`bleu`]), writing a merged model or an adapter for other tools ([`export`]), and a base with
//! an adapter folder loaded for generation ([`adapter`]).
//!
//! May use: `error`, `io`, `compute`, `lora`, `peft`, `models`, tasks t04 and t08 (adapters as
//! PEFT keys, merge).

pub mod adapter;
pub mod bleu;
pub mod export;
pub mod generate;
