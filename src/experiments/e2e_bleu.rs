//! The quality measure of an E2E run besides its loss: corpus BLEU-4 of greedy generations
//! against every reference of each meaning representation.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::inference::generate::GenerateOptions;
use crate::models::CausalLm;
use crate::tasks::t07_eval::{corpus_bleu, evaluate_generation, Generated};

/// Greedy generations for E2E meaning representations `mrs` (with their references), scored with
/// corpus BLEU-4; the generations are written to `out` (JSONL). Each output is cut at its first
/// line, as the E2E references are one sentence.
pub fn e2e_bleu(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    mrs: &[(String, Vec<String>)],
    gen: &GenerateOptions,
    out: &Path,
) -> Result<(f64, Vec<Generated>)> {
    let prompts: Vec<(String, Vec<String>)> =
        mrs.iter().map(|(mr, refs)| (crate::train::data::e2e_prompt(mr), refs.clone())).collect();
    let first_line = |t: &str| t.lines().next().unwrap_or("").trim().to_string();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    }
    let generated = evaluate_generation(model, tok, &prompts, gen, &first_line, out)?;
    let hyps: Vec<String> = generated.iter().map(|g| g.output.clone()).collect();
    let refs: Vec<Vec<String>> = generated.iter().map(|g| g.references.clone()).collect();
    Ok((corpus_bleu(&hyps, &refs), generated))
}
