//! Merging, measured: the time to merge LoRA r16 on every linear layer of SmolLM2-135M (PEFT's
//! `merge_and_unload`: 0.88 s on this machine kind), and greedy generation speed of the base
//! model, the adapted model before merging, and the merged model. Prints ONE JSON line.
//!
//! ```text
//! scripts/fetch-smollm2.sh
//! cargo run --release --example bench_merge
//! ```

use std::time::Instant;

use anyhow::Result;
use candle_core::Tensor;
use clap::Parser;
use lora_from_scratch::inference::generate::{generate, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::models::CausalLm;
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t08_merge::verify_merge;
use lora_from_scratch::LoraConfig;
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Hub id, folder or .gguf.
    #[arg(long, default_value = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    model: String,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Comma-separated targets.
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// New tokens per generation.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
}

/// Greedy tokens/s for exactly `n` new tokens, and the ids.
fn speed(model: &dyn CausalLm, prompt: &[u32], n: usize) -> Result<(f64, Vec<u32>)> {
    let opts = GenerateOptions { max_new_tokens: n, sampling: Sampling::greedy(), stop_ids: vec![] };
    let t = Instant::now();
    let out = generate(model, prompt, &opts)?;
    Ok((out.ids.len() as f64 / t.elapsed().as_secs_f64(), out.ids))
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    // Freed activations stay mapped for the next step instead of being refaulted (src/alloc.rs).
    lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let args = Args::parse();
    let mut loaded = load_model(&args.model, &LoadOptions::default())?;
    let prompt: Vec<u32> = (0..16).map(|i| 100 + 37 * i).collect();
    let (base_tps, base_ids) = speed(loaded.model.as_ref(), &prompt, args.tokens)?;

    let targets: Vec<&str> = args.targets.split(',').collect();
    inject_lora(loaded.model.as_mut(), &LoraConfig::new(args.rank, 2.0 * args.rank as f64, &targets))?;
    // Give B values, or the merge would add zeros.
    for (_, v) in get_lora_parameters(loaded.model.as_ref()) {
        v.set(&(Tensor::randn(0f32, 1.0, v.dims(), v.device())? * 0.05)?)?;
    }
    let (adapted_tps, adapted_ids) = speed(loaded.model.as_ref(), &prompt, args.tokens)?;

    let ids = Tensor::new(prompt.as_slice(), loaded.model.device())?.unsqueeze(0)?;
    let t = Instant::now();
    let (report, merged) = verify_merge(loaded.model.as_mut(), &ids, 1e-3)?;
    let verify_s = t.elapsed().as_secs_f64();
    // The merge alone, timed again on a fresh unmerge: verify_merge also runs two forwards.
    lora_from_scratch::tasks::t08_merge::unmerge_lora_weights(loaded.model.as_mut(), merged)?;
    let t = Instant::now();
    let merged = lora_from_scratch::tasks::t08_merge::merge_lora_weights(loaded.model.as_mut())?;
    let merge_s = t.elapsed().as_secs_f64();
    let (merged_tps, merged_ids) = speed(loaded.model.as_ref(), &prompt, args.tokens)?;

    println!(
        "{}",
        json!({
            "bench": "merge", "model": args.model, "rank": args.rank, "targets": targets,
            "modules_merged": merged.modules.len(), "merge_s": merge_s, "verify_merge_s": verify_s,
            "verify": {"max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff, "passed": report.passed},
            "greedy_tokens": args.tokens,
            "tokens_per_s": {"base": base_tps, "adapted_unmerged": adapted_tps, "merged": merged_tps},
            "merged_generation_equals_adapted": merged_ids == adapted_ids,
            "adapter_changed_generation": adapted_ids != base_ids,
        })
    );
    Ok(())
}
