//! Task 2.3: `evaluate_generation`, perplexity and BLEU.
//!
//! Perplexity is exp of the mean negative log-likelihood per response token (token-weighted over
//! the whole set, not a mean of per-batch means). BLEU-4 (Papineni et al. 2002) is computed over
//! the corpus with several references per output, the closest reference length for the brevity
//! penalty, and no smoothing: exactly `bleu()` of `../shared/bench/peft_e2e_task.py`, so the
//! numbers compare with the PEFT baseline.

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

// ANCHOR: perplexity
/// exp(mean NLL) over every supervised token of `examples`.
pub fn perplexity(model: &mut dyn CausalLm, examples: &[Example], batch_size: usize, pad_id: u32) -> Result<f64> {
    Ok(evaluate_loss(model, examples, batch_size, pad_id)?.exp())
}
// ANCHOR_END: perplexity

// ANCHOR: bleu
/// Corpus BLEU-4 in percent: clipped n-gram precisions for n = 1..4 (each hypothesis n-gram
/// counted at most as often as in the reference that has it most), their geometric mean, times
/// the brevity penalty exp(1 - r / c) when the hypotheses are shorter than the closest references.
pub fn corpus_bleu(hypotheses: &[String], references: &[Vec<String>]) -> f64 {
    let (mut matched, mut total) = ([0usize; 4], [0usize; 4]);
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for (h, refs) in hypotheses.iter().zip(references) {
        let h = bleu_tokens(h);
        let rs: Vec<Vec<String>> = refs.iter().map(|r| bleu_tokens(r)).collect();
        hyp_len += h.len();
        // The closest reference length; ties go to the shorter reference.
        ref_len += rs.iter().map(|r| (r.len().abs_diff(h.len()), r.len())).min().map_or(0, |(_, l)| l);
        for n in 1..=4 {
            let mut best: HashMap<&[String], usize> = HashMap::new();
            for r in &rs {
                for (g, c) in ngrams(r, n) {
                    let e = best.entry(g).or_insert(0);
                    *e = (*e).max(c);
                }
            }
            matched[n - 1] += ngrams(&h, n).iter().map(|(g, c)| (*c).min(*best.get(g).unwrap_or(&0))).sum::<usize>();
            total[n - 1] += (h.len() + 1).saturating_sub(n);
        }
    }
    if matched.contains(&0) {
        return 0.0;
    }
    let log_p: f64 = matched.iter().zip(&total).map(|(&m, &t)| (m as f64 / t as f64).ln()).sum::<f64>() / 4.0;
    let bp = if hyp_len > ref_len { 1.0 } else { (1.0 - ref_len as f64 / hyp_len.max(1) as f64).exp() };
    100.0 * bp * log_p.exp()
}
// ANCHOR_END: bleu

/// One generated output beside its prompt and references.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generated {
    pub prompt: String,
    pub references: Vec<String>,
    pub output: String,
}

// ANCHOR: evaluate_generation
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
    let mut results = Vec::with_capacity(prompts.len());
    let mut jsonl = String::new();
    for (prompt, references) in prompts {
        let ids = generate(model, &encode(tok, prompt)?, opts)?.ids;
        let g =
            Generated { prompt: prompt.clone(), references: references.clone(), output: clean(&decode(tok, &ids)?) };
        jsonl.push_str(&serde_json::to_string(&g).expect("a generation serializes"));
        jsonl.push('\n');
        results.push(g);
    }
    write_atomic(out, jsonl.as_bytes())?;
    Ok(results)
}
// ANCHOR_END: evaluate_generation
