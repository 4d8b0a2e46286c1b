//! Grader for task 2.3, perplexity, BLEU and saved generations (book/src/t07_eval.md).
//!
//! Run: `cargo test --features exercises --test t07_eval`.

#[macro_use]
mod common;

use std::collections::HashMap;

use candle_core::{DType, Tensor, D};
use common::*;
use lora_from_scratch::inference::generate::{GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::t05_data::{collate, tokenize_example, Example, IGNORE_INDEX};
use lora_from_scratch::tasks::t07_eval::{corpus_bleu, evaluate_generation, perplexity};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn bleu_of_identical_text_is_100_and_of_disjoint_text_0() {
    book("t07_eval", "BLEU");
    let refs = vec![s(&["the cat sat on the mat ."])];
    assert_close!(
        [corpus_bleu(&s(&["The cat sat on the mat."]), &refs)],
        [100.0],
        1e-9,
        "case and spacing do not matter"
    );
    assert_eq!(corpus_bleu(&s(&["dogs bark loudly at night"]), &refs), 0.0);
}

#[test]
fn bleu_hand_computed() {
    book("t07_eval", "BLEU");
    // 5 tokens, one wrong at the end: precisions 4/5, 3/4, 2/3, 1/2; equal lengths, so no penalty.
    let got = corpus_bleu(&s(&["a b c d e"]), &[s(&["a b c d f"])]);
    let want = 100.0 * (0.8f64 * 0.75 * (2.0 / 3.0) * 0.5).powf(0.25);
    assert_close!([got], [want], 1e-9, "BLEU by hand: precisions 4/5, 3/4, 2/3, 1/2, no penalty");
    // Too short: the same precisions (all 1), times exp(1 - 8 / 4).
    let got = corpus_bleu(&s(&["a b c d"]), &[s(&["a b c d e f g h"])]);
    assert_close!([got], [100.0 * (1.0f64 - 2.0).exp()], 1e-9, "brevity penalty exp(1 - 8 / 4)");
    // Clipping: "a b c d" said twice matches each n-gram of the reference only once:
    // unigrams 4/8, bigrams 3/7, trigrams 2/6, 4-grams 1/5 (unclipped it would be 8/8, 6/7, ...).
    let got = corpus_bleu(&s(&["a b c d a b c d"]), &[s(&["a b c d"])]);
    let want = 100.0 * (0.5f64 * (3.0 / 7.0) * (2.0 / 6.0) * 0.2).powf(0.25);
    assert_close!([got], [want], 1e-9, "clipped BLEU by hand");
    // Several references: each n-gram clipped by the reference that has it most, the closest
    // reference length for the penalty.
    let got = corpus_bleu(&s(&["x y z w"]), &[s(&["x y q q q q q q q", "p x y z w"])]);
    let want = 100.0 * (1.0f64 * 1.0 * 1.0 * 1.0).powf(0.25) * (1.0f64 - 5.0 / 4.0).exp();
    assert_close!([got], [want], 1e-9, "multi-reference BLEU by hand");
}

#[test]
fn bleu_equals_the_peft_baselines() {
    book("t07_eval", "BLEU");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/bleu_reference.json").unwrap()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let hyps: Vec<String> = serde_json::from_value(case["hypotheses"].clone()).unwrap();
        let refs: Vec<Vec<String>> = serde_json::from_value(case["references"].clone()).unwrap();
        let want = case["bleu"].as_f64().unwrap();
        let got = corpus_bleu(&hyps, &refs);
        assert_close!([got], [want], 1e-9, "BLEU against the baseline script's bleu()");
    }
}

fn examples() -> Vec<Example> {
    vec![
        tokenize_example(&[5, 6, 7], &[8, 9, 10, 11, 12, 13], 2, 64).unwrap(),
        tokenize_example(&[20, 21], &[22], 2, 64).unwrap(),
        tokenize_example(&[30], &[31, 32, 33], 2, 64).unwrap(),
    ]
}

#[test]
fn perplexity_is_exp_of_the_token_mean_nll() {
    book("t07_eval", "Perplexity");
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let ex = examples();
    // By hand: the NLL of every trained token from the full logits, summed over all examples.
    let (mut nll, mut n) = (0.0, 0);
    for e in &ex {
        let b = collate(std::slice::from_ref(e), 0, &CPU).unwrap();
        let logits = m.model.forward(&b.input_ids, None, false).unwrap().to_dtype(DType::F64).unwrap();
        let logp: Vec<Vec<f64>> =
            candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        for t in 1..e.labels.len() {
            if e.labels[t] != IGNORE_INDEX {
                nll -= logp[t - 1][e.labels[t] as usize];
                n += 1;
            }
        }
    }
    let want = (nll / n as f64).exp();
    // Batches of 2 and 1 examples with different token counts: a mean of batch means would differ.
    let got = perplexity(m.model.as_mut(), &ex, 2, 0).unwrap();
    assert_close!(
        [got],
        [want],
        1e-3 * want,
        "perplexity is exp(mean NLL over every token), not a mean of batch means"
    );
}

/// A word-level tokenizer over `w0` .. `w100`, matching the tiny Llama's 101 ids.
fn word_tokenizer() -> Tokenizer {
    let vocab: HashMap<String, u32> = (0..101).map(|i| (format!("w{i}"), i)).collect();
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("w0".into()).build().unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok
}

#[test]
fn generations_are_saved_beside_prompts_and_references() {
    book("t07_eval", "Saving generations");
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let tok = word_tokenizer();
    let prompts = vec![("w5 w6 w7".to_string(), s(&["w8 w9"])), ("w20".to_string(), s(&["w1", "w2 w3"]))];
    let opts = GenerateOptions { max_new_tokens: 4, sampling: Sampling::greedy(), stop_ids: vec![] };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("generations.jsonl");
    let got =
        evaluate_generation(m.model.as_ref(), &tok, &prompts, &opts, &|t: &str| t.trim().to_string(), &out).unwrap();
    assert_eq!(got.len(), 2);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "one JSON line per prompt");
    for ((line, g), (p, refs)) in lines.iter().zip(&got).zip(&prompts) {
        assert_eq!(line["prompt"], p.as_str());
        assert_eq!(line["references"], serde_json::json!(refs));
        assert_eq!(line["output"], g.output.as_str());
        assert_eq!(g.output.split_whitespace().count(), 4, "4 new tokens, decoded: {:?}", g.output);
    }
    // And they are greedy decoding: at each step the arg-max of a full forward pass (no cache).
    for ((prompt, _), g) in prompts.iter().zip(&got) {
        let mut ids: Vec<u32> = prompt.split_whitespace().map(|w| w[1..].parse().unwrap()).collect();
        let start = ids.len();
        for _ in 0..4 {
            let input = Tensor::new(ids.as_slice(), &CPU).unwrap().unsqueeze(0).unwrap();
            let logits = m.model.forward(&input, None, false).unwrap().squeeze(0).unwrap();
            ids.push(logits.get(ids.len() - 1).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap());
        }
        let want: Vec<String> = ids[start..].iter().map(|i| format!("w{i}")).collect();
        assert_eq!(g.output, want.join(" "), "{prompt}: the saved output is not the greedy continuation");
    }
}
