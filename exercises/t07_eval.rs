//! Task 2.3: `evaluate_generation`, perplexity and BLEU.
//!
//! Perplexity is exp of the mean negative log-likelihood per response token (token-weighted over
//! the whole set, not a mean of per-batch means). BLEU-4 (Papineni et al. 2002) is computed over
//! the corpus with several references per output, the closest reference length for the brevity
//! penalty, and no smoothing: exactly `bleu()` of `../shared/bench/peft_e2e_task.py`, so the
//! numbers compare with the PEFT baseline. Read book/src/t07_eval.md beside this file. Grade it
//! with `cargo test --features exercises --test t07_eval`.
#![allow(unused_variables, unused_imports, unused_mut, dead_code)]

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use tokenizers::Tokenizer;

use crate::error::Result;
use crate::inference::bleu::{bleu_tokens, ngrams};
use crate::inference::generate::{generate, GenerateOptions};
use crate::io::write_atomic;
use crate::models::tokenizer::{decode, encode};
use crate::models::CausalLm;
use crate::tasks::t05_data::Example;
use crate::tasks::t06_train::evaluate_loss;

/// exp(mean NLL) over every supervised token of `examples`.
pub fn perplexity(model: &mut dyn CausalLm, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<f64> {
    // TODO: exp of the token-weighted mean loss over `examples` (task 2.2 computes that mean).
    // Book: "Perplexity".
    todo!("t07: perplexity")
}

/// Corpus BLEU-4 in percent: clipped n-gram precisions for n = 1..4 (each hypothesis n-gram
/// counted at most as often as in the reference that has it most), their geometric mean, times
/// the brevity penalty exp(1 - r / c) when the hypotheses are shorter than the closest references.
pub fn corpus_bleu(hypotheses: &[String], references: &[Vec<String>]) -> f64 {
    // TODO: corpus BLEU-4 in percent over the `bleu_tokens` of every text. Summed over the corpus:
    // for n = 1..=4 the clipped matches (each hypothesis n-gram counted at most as often as the
    // reference with most of it has it) and the number of hypothesis n-grams; the hypothesis length
    // c; and the closest reference length r (ties: the shorter). 0 when some n has no match, else
    // 100 * BP * the geometric mean of the four precisions, BP = 1 if c > r, else exp(1 - r / c).
    // Book: "BLEU".
    todo!("t07: corpus_bleu")
}

/// One generated output beside its prompt and references.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generated {
    pub prompt: String,
    pub references: Vec<String>,
    pub output: String,
}

/// Generate a reply for every prompt, write `{prompt, references, output}` lines to `out` (JSONL,
/// atomically), and return them. `clean` post-processes each output (E2E keeps its first line).
pub fn evaluate_generation(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    prompts: &[(String, Vec<String>)],
    opts: &GenerateOptions,
    clean: &dyn Fn(&str) -> String,
    out: &Path,
) -> Result<Vec<Generated>> {
    // TODO: for every (prompt, references), the model's output under `opts`, decoded and passed
    // through `clean`; the `Generated` records written to `out` as JSON lines, atomically, and
    // returned in the order of the prompts.
    // Book: "Saving generations".
    todo!("t07: evaluate_generation")
}
