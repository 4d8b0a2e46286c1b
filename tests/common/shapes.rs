//! GPT-2 124M and SmolLM2-135M at their real sizes, built from weights that take no memory (one
//! zero broadcast to each shape): parameter counts and the lines that print them depend only on
//! the shapes, so these need neither the Hub nor the fetched model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use lora_from_scratch::models::gpt2::{Gpt2, Gpt2Config};
use lora_from_scratch::models::llama::{Llama, LlamaConfig};
use lora_from_scratch::models::weights::Weights;

use super::CPU;

/// Checkpoint tensors of the given names and shapes, each a broadcast zero.
fn weights(shapes: Vec<(String, Vec<usize>)>) -> Weights {
    let zero = Tensor::zeros((), DType::F32, &CPU).unwrap();
    let tensors: HashMap<String, Tensor> =
        shapes.into_iter().map(|(n, s)| (n, zero.broadcast_as(s).unwrap())).collect();
    Weights::from_tensors(tensors, Path::new("(shapes only)"), DType::F32).unwrap()
}

/// GPT-2 124M (`openai-community/gpt2`'s config.json), its Conv1D weights stored [in, out].
pub fn gpt2_124m() -> Gpt2 {
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
    Gpt2::new(config, &weights(shapes), "gpt2 (shapes only)").unwrap()
}

/// SmolLM2-135M-Instruct from its config as transformers writes it
/// (`scripts/smollm2-135m-config.json`): 30 layers of width 576, 9 query heads sharing 3
/// key/value heads of 64, MLP 1536, vocabulary 49152, head tied to the embeddings.
pub fn smollm2_135m() -> Llama {
    let config: LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string("scripts/smollm2-135m-config.json").unwrap()).unwrap();
    let (d, ff, hd) = (config.hidden_size, config.intermediate_size, config.head_dim());
    let (q, kv) = (config.num_attention_heads * hd, config.kv_heads() * hd);
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![config.vocab_size, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [q, d]),
            ("self_attn.k_proj", [kv, d]),
            ("self_attn.v_proj", [kv, d]),
            ("self_attn.o_proj", [d, q]),
            ("mlp.gate_proj", [ff, d]),
            ("mlp.up_proj", [ff, d]),
            ("mlp.down_proj", [d, ff]),
        ] {
            shapes.push((format!("{p}.{name}.weight"), shape.to_vec()));
        }
        shapes.push((format!("{p}.input_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    }
    Llama::new(config, &weights(shapes), "SmolLM2-135M (shapes only)").unwrap()
}
