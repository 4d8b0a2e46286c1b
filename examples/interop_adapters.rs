//! Write the files that `scripts/make_fixtures.py` reads with PEFT and transformers, to prove that
//! what this crate saves means the same thing in Python:
//!
//! ```text
//! cargo run --example interop_adapters            # -> tests/fixtures/peft/, tests/fixtures/merged/
//! python scripts/make_fixtures.py                 # PEFT's / transformers' logits, beside them
//! ```
//!
//! - `peft/<model>-from-rust/`: an adapter (r 4, alpha 8, seeded random A and B) by
//!   `save_lora_weights`;
//! - `peft/tiny-gpt2-split-ours/` and `peft/tiny-gpt2-split-from-rust/`: adapters on the q and v
//!   slices of GPT-2's `c_attn`, in our per-slice format and exported for PEFT (block construction);
//! - `merged/<model>/` and `merged/<model>-adapter/`: a model with a random adapter merged and saved
//!   as a Hugging Face folder, and the adapter it merged.

use anyhow::Result;
use candle_core::Tensor;
use lora_from_scratch::inference::export::{save_peft_adapter, save_pretrained};
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::save_lora_weights;
use lora_from_scratch::tasks::t08_merge::merge_lora_weights;
use lora_from_scratch::LoraConfig;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// A fixture model with an adapter on `targets` whose A and B are seeded random numbers.
fn adapted(fixture: &str, targets: &[&str], split_qkv: bool, seed: u64) -> Result<(LoadedModel, LoraConfig)> {
    let opts = LoadOptions { split_qkv, ..Default::default() };
    let mut m = load_model(&format!("tests/fixtures/{fixture}"), &opts)?;
    let cfg = LoraConfig::new(4, 8.0, targets);
    inject_lora(m.model.as_mut(), &cfg)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.1)?;
    for (_, v) in get_lora_parameters(m.model.as_ref()) {
        let vals: Vec<f32> = (0..v.elem_count()).map(|_| normal.sample(&mut rng)).collect();
        v.set(&Tensor::from_vec(vals, v.dims(), v.device())?)?;
    }
    Ok((m, cfg))
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    let root = std::path::Path::new("tests/fixtures");
    // The same targets as PEFT_TARGETS in scripts/make_fixtures.py.
    for (fixture, targets) in [
        ("tiny-gpt2", vec!["c_attn", "mlp.c_proj"]),
        ("tiny-llama", vec!["q_proj", "v_proj", "down_proj"]),
        ("tiny-qwen2", vec!["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
        ("tiny-mistral", vec!["q_proj", "v_proj", "gate_proj"]),
    ] {
        let (m, cfg) = adapted(fixture, &targets, false, 7)?;
        save_lora_weights(m.model.as_ref(), &cfg, &root.join(format!("peft/{fixture}-from-rust")))?;

        let (mut m, cfg) = adapted(fixture, &targets, false, 11)?;
        save_lora_weights(m.model.as_ref(), &cfg, &root.join(format!("merged/{fixture}-adapter")))?;
        merge_lora_weights(m.model.as_mut())?;
        save_pretrained(m.model.as_ref(), None, &root.join(format!("merged/{fixture}")))?;
    }
    let (m, cfg) = adapted("tiny-gpt2", &["c_attn.q", "c_attn.v"], true, 13)?;
    save_lora_weights(m.model.as_ref(), &cfg, &root.join("peft/tiny-gpt2-split-ours"))?;
    save_peft_adapter(m.model.as_ref(), &cfg, &root.join("peft/tiny-gpt2-split-from-rust"))?;
    println!("wrote the interop fixtures under {}", root.display());
    Ok(())
}
