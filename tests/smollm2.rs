//! The real SmolLM2-135M-Instruct, read from its GGUF (`scripts/fetch-smollm2.sh`), against
//! Hugging Face transformers reading the same file (fixtures from `scripts/make_fixtures.py`):
//! tokenizer ids, logits, and greedy generations, plain and through the chat template.
//!
//! Without the model these tests say so (a line `cargo test` shows) and pass, unless `LORA_FROM_SCRATCH_REQUIRE_MODELS=1`
//! (set by CI), which makes a missing model a failure.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use common::{max_abs_diff, values, CPU};
use lora_from_scratch::fetch::offline_models::SMOLLM2;
use lora_from_scratch::inference::generate::{generate, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_gguf, LoadOptions, LoadedModel};
use lora_from_scratch::models::tokenizer::{decode, encode, smollm2_chat_prompt, token_id, ChatMessage};

fn smollm2() -> Option<LoadedModel> {
    let path = common::smollm2_or_skip()?;
    Some(load_gguf(&path, "HuggingFaceTB/SmolLM2-135M-Instruct", &LoadOptions::default()).unwrap())
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load("tests/fixtures/smollm2/gguf_logits.safetensors", &CPU).unwrap()
}

fn ids(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::U32).unwrap().to_vec1().unwrap()
}

#[test]
fn tokenizer_gives_the_ids_of_the_models_own() {
    let Some(m) = smollm2() else { return };
    let tok = m.tokenizer().unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/smollm2/tokenizer_ids.json").unwrap()).unwrap();
    let samples = fixture["samples"].as_array().unwrap();
    let expected = fixture["ids"].as_array().unwrap();
    assert!(samples.len() >= 8);
    for (s, want) in samples.iter().zip(expected) {
        let s = s.as_str().unwrap();
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = encode(tok, s).unwrap();
        assert_eq!(got, want, "ids of {s:?}");
        assert_eq!(decode(tok, &got).unwrap(), s, "decoding the ids of {s:?} gives the text back");
    }
}

#[test]
fn gguf_logits_match_transformers() {
    let Some(m) = smollm2() else { return };
    let r = reference();
    let input = Tensor::new(ids(&r["input_ids"]), &CPU).unwrap().unsqueeze(0).unwrap();
    let logits = m.model.forward(&input, None, false).unwrap().squeeze(0).unwrap();
    let head = logits.narrow(1, 0, 2048).unwrap();
    let last = logits.get(logits.dim(0).unwrap() - 1).unwrap();
    // Logits here are of order 10-20; 30 layers of f32 sums in another order differ by ~5e-5.
    let d_head = max_abs_diff(&values(&head), &values(&r["logits_head"]));
    let d_last = max_abs_diff(&values(&last), &values(&r["logits_last"]));
    assert!(d_head < 5e-4 && d_last < 5e-4, "logits differ from transformers' by {d_head} / {d_last}");
}

#[test]
fn greedy_completion_names_paris() {
    let Some(m) = smollm2() else { return };
    let r = reference();
    let tok = m.tokenizer().unwrap();
    let prompt = encode(tok, "The capital of France is").unwrap();
    assert_eq!(prompt, ids(&r["input_ids"]));
    let want = ids(&r["completion_ids"]);
    let opts = GenerateOptions { max_new_tokens: want.len(), sampling: Sampling::greedy(), stop_ids: vec![] };
    let out = generate(m.model.as_ref(), &prompt, &opts).unwrap();
    let text = decode(tok, &out.ids).unwrap();
    assert!(text.contains("Paris"), "completion: {text:?}");
    assert_eq!(out.ids, want, "transformers' greedy completion is {:?}, ours {text:?}", decode(tok, &want).unwrap());
}

#[test]
fn chat_reply_is_the_models_own() {
    let Some(m) = smollm2() else { return };
    let r = reference();
    let tok = m.tokenizer().unwrap();
    let prompt = smollm2_chat_prompt(&[ChatMessage::new("user", "What is the capital of France?")], true);
    let prompt_ids = encode(tok, &prompt).unwrap();
    assert_eq!(prompt_ids, ids(&r["chat_ids"]), "our chat template and tokenizer give transformers' ids");
    let im_end = token_id(tok, "<|im_end|>").unwrap();
    assert_eq!(m.eos_ids, [im_end]);
    let opts = GenerateOptions { max_new_tokens: 24, sampling: Sampling::greedy(), stop_ids: m.eos_ids.clone() };
    let out = generate(m.model.as_ref(), &prompt_ids, &opts).unwrap();
    // transformers' reply ends with <|im_end|>; ours stops there without it.
    let want: Vec<u32> = ids(&r["chat_reply_ids"]).into_iter().take_while(|&t| t != im_end).collect();
    let text = decode(tok, &out.ids).unwrap();
    assert_eq!(out.ids, want, "reply: {text:?}");
    assert!(text.contains("Paris"), "reply: {text:?}");
}

/// A token budget that ends inside a Chinese character (byte-level tokens) drops the half
/// character instead of printing U+FFFD.
#[test]
fn a_character_cut_by_the_budget_is_dropped() {
    let Some(m) = smollm2() else { return };
    let tok = m.tokenizer().unwrap();
    let prompt = smollm2_chat_prompt(&[ChatMessage::new("user", "什么是机器学习？")], true);
    let opts = GenerateOptions { max_new_tokens: 8, sampling: Sampling::greedy(), stop_ids: m.eos_ids.clone() };
    let raw = generate(m.model.as_ref(), &encode(tok, &prompt).unwrap(), &opts).unwrap();
    assert!(decode(tok, &raw.ids).unwrap().ends_with('\u{FFFD}'), "this budget cuts a character (the premise)");
    let text = lora_from_scratch::inference::generate::generate_text(m.model.as_ref(), tok, &prompt, &opts).unwrap();
    assert!(text.starts_with("机器学") && !text.contains('\u{FFFD}'), "{text:?}");
}

/// The base kept in the file's own Q4_1 blocks (QLoRA on a GGUF base, t09) computes what the
/// dequantized load computes: transformers' logits, to the same tolerance. This also checks
/// that q and k rows were reordered block row by block row as the dense load reorders them.
#[test]
fn gguf_q4_1_base_kept_quantized_matches_transformers() {
    let Some(mut m) = smollm2() else { return };
    let path = SMOLLM2.cached().unwrap();
    let mut file = lora_from_scratch::models::gguf::GgufFile::open(&path).unwrap();
    let config = file.llama_config().unwrap();
    let weights = file.quantized_linears(&config).unwrap();
    assert_eq!(weights.len(), 210, "every linear layer of SmolLM2 is Q4_1 in this file");
    let weights = weights
        .into_iter()
        .map(|(n, w)| {
            (n, std::sync::Arc::new(w) as std::sync::Arc<dyn lora_from_scratch::compute::quantized::QuantizedWeight>)
        })
        .collect();
    assert_eq!(lora_from_scratch::qlora::base::use_quantized_weights(m.model.as_mut(), weights).unwrap(), 210);
    let (quant, quant_f32, _) = lora_from_scratch::qlora::base::base_bytes(m.model.as_ref());
    assert_eq!(quant * 32, quant_f32 * 5, "Q4_1 is 5 bits per weight (20 bytes per block of 32)");
    // And the embedding (the tied head too) in its Q8_0 blocks.
    let embed = file.quantized_tensor("token_embd.weight").unwrap().expect("SmolLM2's embedding is Q8_0");
    assert!(m.model.set_quantized_param("model.embed_tokens.weight", std::sync::Arc::new(embed)).unwrap());
    let r = reference();
    let input = Tensor::new(ids(&r["input_ids"]), &CPU).unwrap().unsqueeze(0).unwrap();
    let logits = m.model.forward(&input, None, false).unwrap().squeeze(0).unwrap();
    let last = logits.get(logits.dim(0).unwrap() - 1).unwrap();
    let d_last = max_abs_diff(&values(&last), &values(&r["logits_last"]));
    assert!(d_last < 5e-4, "logits differ from transformers' by {d_last}");
}
