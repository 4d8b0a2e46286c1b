//! Quickstart: LoRA on the small test model in a few lines: inject, inspect, train, save, load.
//!
//! `cargo run --example quickstart -- --out /tmp/tiny-adapter`
//!
//! The real models (GPT-2, SmolLM2) and the training loop arrive with their own tasks; this shows
//! the task-1 API end to end on `TinyLm`, whose layers are named like a Llama's.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use lora_from_scratch::models::tiny::{TinyConfig, TinyLm};
use lora_from_scratch::tasks::t03_inject::{check_gradients, check_lora_injection, print_trainable_parameters};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::{load_lora_weights, save_lora_weights};
use lora_from_scratch::LoraConfig;

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    let out = std::env::args()
        .skip_while(|a| a != "--out")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lora-quickstart-adapter"));
    let device = Device::Cpu;
    let mut model = TinyLm::new(TinyConfig::default(), 42, &device)?;

    // r = 4, alpha = 8 on the attention's query and value projections (the paper's choice).
    let config = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    let summary = inject_lora(&mut model, &config)?;
    println!("{summary}\n");
    print_trainable_parameters(&model);
    println!("\n{}\n", check_lora_injection(&model));

    // A few AdamW steps on a toy objective: push the logits of a fixed batch towards zero.
    let ids = Tensor::new(&[[1u32, 5, 9, 2], [3, 3, 7, 0]], &device)?;
    let vars = get_lora_parameters(&model).into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: 1e-2, ..Default::default() })?;
    for step in 0..=20 {
        let loss = model.loss(&ids, true)?;
        if step == 0 {
            println!("{}\n", check_gradients(&model, &loss.backward()?)?);
        }
        if step % 5 == 0 {
            println!("step {step:2}: loss {:.5}", loss.to_scalar::<f32>()?);
        }
        opt.backward_step(&loss)?;
    }

    save_lora_weights(&model, &config, &out)?;
    let mut fresh = TinyLm::new(TinyConfig::default(), 42, &device)?;
    load_lora_weights(&mut fresh, &out)?;
    let same = (fresh.forward(&ids, false)? - model.forward(&ids, false)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("\nsaved to {} and loaded into a fresh base: max logit difference {same}", out.display());
    Ok(())
}
