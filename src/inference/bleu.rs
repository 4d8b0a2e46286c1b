//! BLEU's pieces that are not the exercise: the tokenizer of `../shared/bench/peft_e2e_task.py`
//! (lower-cased words `\w+` and single punctuation marks) and n-gram counting. Task 2.3's
//! `corpus_bleu` uses them.

use std::collections::HashMap;

/// BLEU's tokens: lower-cased words (`\w+`) and single punctuation marks.
pub fn bleu_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// How often each n-gram of `tokens` occurs.
pub(crate) fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for g in tokens.windows(n) {
        *counts.entry(g).or_insert(0) += 1;
    }
    counts
}
