//! The parameter arithmetic that the book's chapter "The idea and the math of LoRA" works out by
//! hand for GPT-2 (124M) and SmolLM2-135M, checked against what our models and `inject_lora`
//! actually count. The models are built at full size from zero weights (the counts depend only on
//! the shapes), so this needs neither the Hub nor the fetched model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use lora_from_scratch::models::gpt2::{Gpt2, Gpt2Config};
use lora_from_scratch::models::llama::{Llama, LlamaConfig};
use lora_from_scratch::models::weights::Weights;
use lora_from_scratch::tasks::t03_inject::{count_parameters, get_lora_parameters, inject_lora};
use lora_from_scratch::{LoraConfig, LoraModel};

const CPU: candle_core::Device = candle_core::Device::Cpu;

fn zeros(shapes: Vec<(String, Vec<usize>)>) -> Weights {
    let tensors: HashMap<String, Tensor> =
        shapes.into_iter().map(|(n, s)| (n, Tensor::zeros(s, DType::F32, &CPU).unwrap())).collect();
    Weights::from_tensors(tensors, Path::new("zeros"), DType::F32).unwrap()
}

/// GPT-2 124M (`openai-community/gpt2`'s config.json), its Conv1D weights stored [in, out].
fn gpt2() -> Gpt2 {
    let config: Gpt2Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12
    }))
    .unwrap();
    let d = 768;
    let mut shapes = vec![
        ("wte.weight".to_string(), vec![50257, d]),
        ("wpe.weight".to_string(), vec![1024, d]),
        ("ln_f.weight".to_string(), vec![d]),
        ("ln_f.bias".to_string(), vec![d]),
    ];
    for i in 0..12 {
        for (name, (fan_in, fan_out)) in
            [("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)), ("mlp.c_fc", (d, 4 * d)), ("mlp.c_proj", (4 * d, d))]
        {
            shapes.push((format!("h.{i}.{name}.weight"), vec![fan_in, fan_out]));
            shapes.push((format!("h.{i}.{name}.bias"), vec![fan_out]));
        }
        for norm in ["ln_1", "ln_2"] {
            shapes.push((format!("h.{i}.{norm}.weight"), vec![d]));
            shapes.push((format!("h.{i}.{norm}.bias"), vec![d]));
        }
    }
    Gpt2::new(config, &zeros(shapes), "gpt2-shapes").unwrap()
}

/// SmolLM2-135M-Instruct's config: 30 layers of width 576, 9 query heads sharing 3 key/value
/// heads of 64, MLP 1536, vocabulary 49152, head tied to the embeddings.
fn smollm2() -> Llama {
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": true
    }))
    .unwrap();
    let (d, kv, ff) = (576, 192, 1536);
    let mut shapes =
        vec![("model.embed_tokens.weight".to_string(), vec![49152, d]), ("model.norm.weight".to_string(), vec![d])];
    for i in 0..30 {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [d, d]),
            ("self_attn.k_proj", [kv, d]),
            ("self_attn.v_proj", [kv, d]),
            ("self_attn.o_proj", [d, d]),
            ("mlp.gate_proj", [ff, d]),
            ("mlp.up_proj", [ff, d]),
            ("mlp.down_proj", [d, ff]),
        ] {
            shapes.push((format!("{p}.{name}.weight"), shape.to_vec()));
        }
        shapes.push((format!("{p}.input_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    }
    Llama::new(config, &zeros(shapes), "smollm2-shapes").unwrap()
}

/// Inject into a copy of `model` and return (trainable, total) parameters.
fn with_lora<M: LoraModel + Clone>(model: &M, r: usize, targets: &[&str]) -> (usize, usize) {
    let mut m = model.clone();
    inject_lora(&mut m, &LoraConfig::new(r, 2.0 * r as f64, targets)).unwrap();
    let count = count_parameters(&m);
    let adapters: usize = get_lora_parameters(&m).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(count.trainable, adapters, "after injection only the adapters train");
    (count.trainable, count.total)
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (inject_lora, count_parameters); graded by tests/t*.rs"
)]
fn gpt2_counts_are_the_books() {
    let mut base = gpt2();
    let total = count_parameters(&base).total;
    assert_eq!(total, 124_439_808, "GPT-2 124M");
    // train_gpt2's default: r = 16 on the fused c_attn, as PEFT adapts GPT-2.
    assert_eq!(with_lora(&base, 16, &["c_attn"]), (589_824, total + 589_824));
    // Every linear of the blocks at r = 8.
    assert_eq!(with_lora(&base, 8, &["all-linear"]).0, 1_179_648);
    // The paper's q and v only, as slices of c_attn.
    base.split_qkv().unwrap();
    assert_eq!(with_lora(&base, 8, &["c_attn.q", "c_attn.v"]).0, 294_912);
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (inject_lora, count_parameters); graded by tests/t*.rs"
)]
fn smollm2_counts_are_the_books() {
    let base = smollm2();
    let total = count_parameters(&base).total;
    assert_eq!(total, 134_515_008, "SmolLM2-135M");
    assert_eq!(with_lora(&base, 8, &["q_proj", "v_proj"]).0, 460_800);
    assert_eq!(with_lora(&base, 16, &["q_proj", "v_proj"]).0, 921_600);
    assert_eq!(with_lora(&base, 8, &["all-linear"]).0, 2_442_240);
}
