//! The seed tutorial's own evaluation: answers to held-out prompts, before and after fine-tuning,
//! judged by hand against four criteria (relevance, fluency, accuracy, diversity; the rubric is in
//! the book's end-to-end chapter), with the automatic proxies that exist beside them: distinct-n
//! for diversity (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
//! Conversation Models"), the answers' length, and the perplexity of a reference answer.
//!
//! The prompts (`data/heldout_prompts.jsonl`, English and Chinese, the seed's three among them)
//! are never in the training data; `tests/data.rs` checks that against the embedded dataset.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::inference::generate::{generate, GenerateOptions};
use crate::io::write_atomic;
use crate::models::tokenizer::{decode, encode};
use crate::models::CausalLm;
use crate::tasks::t07_eval::perplexity;
use crate::train::data::{encode_samples, Sample, Template};

const EMBEDDED: &str = include_str!("../../data/heldout_prompts.jsonl");

/// One held-out prompt with a short reference answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldoutPrompt {
    /// `en` or `zh`.
    pub lang: String,
    pub prompt: String,
    pub reference: String,
}

/// The held-out prompts shipped with the crate.
pub fn heldout_prompts() -> Vec<HeldoutPrompt> {
    EMBEDDED
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("data/heldout_prompts.jsonl parses"))
        .collect()
}

/// A model's greedy answer to one held-out prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldoutAnswer {
    pub prompt: String,
    pub reference: String,
    pub answer: String,
    /// Tokens in the answer (the stop token not counted).
    pub answer_tokens: usize,
    /// The answer's token ids, for distinct-n.
    #[serde(skip)]
    pub ids: Vec<u32>,
}

/// The automatic proxies over one set of answers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldoutSummary {
    /// Distinct unigrams / all unigrams over every answer (tokens).
    pub distinct_1: f64,
    /// Distinct bigrams / all bigrams.
    pub distinct_2: f64,
    /// Mean answer length in tokens.
    pub mean_tokens: f64,
    /// Perplexity of the reference answers given their prompts (lower: the model finds the
    /// right answer more likely).
    pub reference_ppl: f64,
}

/// Distinct n-grams over all n-grams of every answer (0 when there are none): 1.0 means no
/// n-gram repeats, within an answer or across answers; a model that loops or gives every prompt
/// the same answer scores low.
fn distinct_n(answers: &[Vec<u32>], n: usize) -> f64 {
    let mut all = 0usize;
    let mut seen = HashSet::new();
    for ids in answers {
        for gram in ids.windows(n.max(1)) {
            all += 1;
            seen.insert(gram.to_vec());
        }
    }
    if all == 0 {
        0.0
    } else {
        seen.len() as f64 / all as f64
    }
}

/// Answer every prompt greedily, score the proxies, and write the answers as JSONL to `jsonl`.
/// `progress` prints a line per prompt (generation is the slow part).
#[allow(clippy::too_many_arguments)]
pub fn run_heldout(
    model: &mut dyn CausalLm,
    tok: &Tokenizer,
    template: Template,
    eos: u32,
    gen: &GenerateOptions,
    prompts: &[HeldoutPrompt],
    jsonl: &Path,
    progress: bool,
) -> Result<(Vec<HeldoutAnswer>, HeldoutSummary)> {
    if prompts.is_empty() {
        return Err(LoraError::input("held-out prompts", "the set is empty"));
    }
    let t0 = std::time::Instant::now();
    let mut answers = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = encode(tok, &template.prompt(&p.prompt, ""))?;
        let out = generate(&*model, &ids, gen)?;
        let answer = decode(tok, &out.ids)?.trim().to_string();
        if progress {
            eprintln!("  held-out {}/{} ({:.0} s): {}", i + 1, prompts.len(), t0.elapsed().as_secs_f64(), p.prompt);
        }
        answers.push(HeldoutAnswer {
            prompt: p.prompt.clone(),
            reference: p.reference.clone(),
            answer,
            answer_tokens: out.ids.len(),
            ids: out.ids,
        });
    }
    let samples: Vec<Sample> = prompts
        .iter()
        .map(|p| Sample { prompt: template.prompt(&p.prompt, ""), response: p.reference.clone() })
        .collect();
    let (examples, _) = encode_samples(tok, &samples, eos, 512)?;
    let ids: Vec<Vec<u32>> = answers.iter().map(|a| a.ids.clone()).collect();
    let summary = HeldoutSummary {
        distinct_1: distinct_n(&ids, 1),
        distinct_2: distinct_n(&ids, 2),
        mean_tokens: answers.iter().map(|a| a.answer_tokens as f64).sum::<f64>() / answers.len() as f64,
        reference_ppl: perplexity(model, &examples, 4, eos)?,
    };
    let mut text = String::new();
    for a in &answers {
        text.push_str(&serde_json::to_string(a).map_err(|e| LoraError::file(jsonl, e.to_string()))?);
        text.push('\n');
    }
    write_atomic(jsonl, text.as_bytes())?;
    Ok((answers, summary))
}

/// One line of a markdown table cell: no newlines, no pipes.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The before/after answers side by side, with the proxies, as markdown (atomically).
pub fn write_side_by_side(
    path: &Path,
    before: &(Vec<HeldoutAnswer>, HeldoutSummary),
    after: &(Vec<HeldoutAnswer>, HeldoutSummary),
) -> Result<()> {
    let mut md = String::from("# Held-out prompts, before and after fine-tuning\n\n");
    md.push_str(&summary_table(&before.1, &after.1));
    md.push_str("\n| prompt | before | after | reference |\n|---|---|---|---|\n");
    for (b, a) in before.0.iter().zip(&after.0) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            cell(&b.prompt),
            cell(&b.answer),
            cell(&a.answer),
            cell(&b.reference)
        );
    }
    md.push_str(
        "\nScore each answer 1-5 for relevance, fluency, accuracy and diversity (the rubric is in the \
         book's chapter \"End to end\", section \"Judge the answers yourself\").\n",
    );
    write_atomic(path, md.as_bytes())
}

/// The proxies before and after as a markdown table.
pub fn summary_table(before: &HeldoutSummary, after: &HeldoutSummary) -> String {
    let mut t = String::from("| proxy | before | after |\n|---|---|---|\n");
    let _ = writeln!(t, "| distinct-1 (diversity) | {:.3} | {:.3} |", before.distinct_1, after.distinct_1);
    let _ = writeln!(t, "| distinct-2 (diversity) | {:.3} | {:.3} |", before.distinct_2, after.distinct_2);
    let _ = writeln!(t, "| mean answer length (tokens) | {:.1} | {:.1} |", before.mean_tokens, after.mean_tokens);
    let _ = writeln!(
        t,
        "| perplexity of the reference answers | {:.2} | {:.2} |",
        before.reference_ppl, after.reference_ppl
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_n_counts_repeats_within_and_across_answers() {
        assert_eq!(distinct_n(&[vec![1, 2, 3, 4]], 1), 1.0);
        assert_eq!(distinct_n(&[vec![1, 1, 1, 1]], 1), 0.25);
        // The same answer to two prompts: half the bigrams repeat.
        assert_eq!(distinct_n(&[vec![1, 2, 3], vec![1, 2, 3]], 2), 0.5);
        assert_eq!(distinct_n(&[vec![5]], 2), 0.0, "no bigram at all");
    }

    #[test]
    fn the_seeds_three_prompts_come_first_in_both_languages() {
        let p = heldout_prompts();
        let first: Vec<&str> = p.iter().take(3).map(|p| p.prompt.as_str()).collect();
        assert_eq!(first, ["解释什么是深度学习", "列举三个人工智能的应用", "什么是Transformer架构"]);
        assert!(p.iter().any(|p| p.lang == "en") && p.iter().any(|p| p.lang == "zh"));
        assert!(p.iter().all(|p| !p.reference.trim().is_empty()));
    }
}
