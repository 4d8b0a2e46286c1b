//! Every model family refuses a sequence longer than it was built for, with an error naming both
//! numbers, before it allocates anything for it: GPT-2 by its learned positions (`n_positions`),
//! a Llama by `max_position_embeddings` (config.json) or `llama.context_length` (GGUF). Without
//! the limit, a 10,000-token prompt into SmolLM2 asked for 3.6 GB of attention scores and aborted
//! the process.

mod common;

use candle_core::Tensor;
use common::CPU;
use lora_from_scratch::inference::generate::{generate, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_gguf, load_model, LoadOptions};
use lora_from_scratch::models::CausalLm;
use lora_from_scratch::LoraError;

fn ids(n: usize) -> Tensor {
    Tensor::new((0..n as u32).map(|i| i % 7 + 1).collect::<Vec<u32>>(), &CPU).unwrap().unsqueeze(0).unwrap()
}

/// The model takes `limit` positions, refuses `limit + 1` naming both numbers, and counts the
/// positions already in a KV cache.
fn refuses_past(model: &dyn CausalLm, limit: usize) {
    model.forward(&ids(limit), None, false).unwrap();
    let err = model.forward(&ids(limit + 1), None, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoraError::InvalidInput { .. }), "{msg}");
    assert!(msg.contains(&(limit + 1).to_string()) && msg.contains(&limit.to_string()), "{msg}");

    let mut cache = model.new_cache();
    model.forward(&ids(limit - 2), Some(&mut cache), false).unwrap();
    let msg = model.forward(&ids(3), Some(&mut cache), false).unwrap_err().to_string();
    assert!(msg.contains(&format!("{} cached + 3 new", limit - 2)), "{msg}");

    let msg = generate(
        model,
        &vec![1; limit + 1],
        &GenerateOptions { max_new_tokens: 2, sampling: Sampling::greedy(), stop_ids: vec![] },
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains(&limit.to_string()), "a prompt past the limit: {msg}");
}

#[test]
fn gpt2_refuses_a_sequence_past_its_learned_positions() {
    let m = load_model("tests/fixtures/tiny-gpt2", &LoadOptions::default()).unwrap();
    assert_eq!(m.model.max_positions(), Some(32));
    refuses_past(m.model.as_ref(), 32);
}

#[test]
fn llama_refuses_a_sequence_past_max_position_embeddings() {
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    assert_eq!(m.model.max_positions(), Some(64), "read from config.json");
    refuses_past(m.model.as_ref(), 64);
    // And the limit travels with the model when it is exported.
    assert_eq!(m.model.hf_config()["max_position_embeddings"], 64);
}

#[test]
fn smollm2_refuses_ten_thousand_tokens_with_a_clear_error() {
    let Some(path) = common::smollm2_or_skip() else {
        return;
    };
    let m = load_gguf(&path, "HuggingFaceTB/SmolLM2-135M-Instruct", &LoadOptions::default()).unwrap();
    assert_eq!(m.model.max_positions(), Some(8192), "llama.context_length of the GGUF");
    let msg = m.model.forward(&ids(10_000), None, false).unwrap_err().to_string();
    assert!(msg.contains("10000") && msg.contains("8192"), "{msg}");
    assert_eq!(m.model.hf_config()["max_position_embeddings"], 8192, "an exported merge keeps the limit");
}
