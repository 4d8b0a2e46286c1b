//! Throughput of SmolLM2-135M in this crate, in the shape of `../shared/bench/peft_baseline.py`
//! so the two can be compared side by side: no-grad forward, and a training step (forward, loss,
//! backward, AdamW) with LoRA on chosen modules, on seeded random token ids. Prints ONE JSON line:
//! tokens/s, seconds per step (median), peak RSS, and where the figure comes from: the CPU
//! (`host`), the matmul GFLOP/s measured here at the step's shapes, and the step's fraction of
//! that roofline (its matmul FLOPs / that speed / its time).
//!
//! ```text
//! scripts/fetch-smollm2.sh
//! cargo run --release --example bench_smollm2 -- --batch 8 --seq 128 --rank 8 --targets q_proj,v_proj
//! cargo run --release --example bench_smollm2 -- --bf16            # the base in bf16
//! cargo run --release --example bench_smollm2 -- --frozen-linear   # the frozen-linear op alone
//! ```
//!
//! Measure on an idle machine: on two cores, a build running beside it halves the figures.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use lora_from_scratch::compute::ops::frozen_linear;
use lora_from_scratch::experiments::memory::peak_rss_mib;
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::models::CausalLm;
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t05_data::Batch;
use lora_from_scratch::tasks::t06_train::causal_lm_loss;
use lora_from_scratch::train::optim::{AdamW, AdamWParams};
use lora_from_scratch::train::settings;
use lora_from_scratch::LoraConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    /// Hub id, folder or .gguf.
    #[arg(long, default_value = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    model: String,
    /// Run on the CPU even when built with `cuda` and a GPU is present.
    #[arg(long)]
    cpu: bool,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 8, value_parser = settings::at_least_one)]
    rank: usize,
    /// LoRA alpha; the baseline script's default is 2 * rank.
    #[arg(long, value_parser = settings::positive)]
    alpha: Option<f64>,
    /// Comma-separated target modules (`all-linear` for every linear layer but the head).
    #[arg(long, default_value = "q_proj,v_proj")]
    targets: String,
    /// Full fine-tuning: every weight trainable, no adapters.
    #[arg(long)]
    full_ft: bool,
    /// Timed steps (the median is reported) after the warm-up steps.
    #[arg(long, default_value_t = 5, value_parser = settings::at_least_one)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Keep the base model in bf16 (adapters, norms and activations f32; on the CPU the bf16
    /// matmul of `compute::bf16`).
    #[arg(long)]
    bf16: bool,
    /// Instead: time forward + backward of one GPT-2-sized linear layer (768 -> 3072 at
    /// batch x seq tokens), frozen-linear op against candle's matmul of a detached weight.
    #[arg(long)]
    frozen_linear: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Run `f` `warmup` times untimed, then `steps` times timed; the median in seconds.
fn time(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn bench_frozen_linear(args: &Args) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0);
    let dev = Device::Cpu;
    let n = args.batch * args.seq;
    let w = Tensor::new((0..3072 * 768).map(|_| rng.random::<f32>() - 0.5).collect::<Vec<_>>(), &dev)?
        .reshape((3072, 768))?;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (args.batch, args.seq, 768), &dev)?)?;
    let ours = time(args.warmup, args.steps, || {
        let g = frozen_linear(x.as_tensor(), &w)?.sum_all()?.backward()?;
        assert!(g.get(x.as_tensor()).is_some());
        Ok(())
    })?;
    let plain = time(args.warmup, args.steps, || {
        let g = x.as_tensor().broadcast_matmul(&w.t()?)?.sum_all()?.backward()?;
        assert!(g.get(x.as_tensor()).is_some());
        Ok(())
    })?;
    let line = json!({
        "bench": "frozen_linear", "tokens": n, "in": 768, "out": 3072,
        "frozen_linear_s": ours, "candle_matmul_s": plain, "speedup": plain / ours,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{line}");
    Ok(())
}

/// The matmul shapes (in, out) of the model's linear layers and how many of each, the output
/// head included (the largest: the tied embedding table [vocab, d] for SmolLM2).
fn matmul_shapes(model: &dyn CausalLm) -> Result<BTreeMap<(usize, usize), usize>> {
    let mut shapes = BTreeMap::new();
    for (_, slot) in model.linears() {
        *shapes.entry(slot.in_out_features()).or_insert(0) += 1;
    }
    if model.output_head().is_none() {
        if let Some(w) = model.head_weight()? {
            let (vocab, d) = w.dims2()?;
            *shapes.entry((d, vocab)).or_insert(0) += 1;
        }
    }
    Ok(shapes)
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    // Freed activations stay mapped for the next step instead of being refaulted (src/alloc.rs).
    let alloc_tuned = lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let args = Args::parse();
    if args.frozen_linear {
        return bench_frozen_linear(&args);
    }
    let t0 = Instant::now();
    let device = lora_from_scratch::compute::device::pick_device(args.cpu)?;
    let mut loaded = load_model(
        &args.model,
        &LoadOptions { device, dtype: if args.bf16 { DType::BF16 } else { DType::F32 }, ..Default::default() },
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mib();
    let targets: Vec<&str> = args.targets.split(',').collect();
    let vars: Vec<(String, Var)> = if args.full_ft {
        lora_from_scratch::experiments::full::unfreeze_all(loaded.model.as_mut())?
    } else {
        let cfg = LoraConfig::new(args.rank, args.alpha.unwrap_or(2.0 * args.rank as f64), &targets);
        lora_from_scratch::train::settings::check_adapter_fits(loaded.model.as_ref(), &cfg)?;
        inject_lora(loaded.model.as_mut(), &cfg)?;
        get_lora_parameters(loaded.model.as_ref())
    };
    let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let model = loaded.model.as_ref();

    let mut rng = StdRng::seed_from_u64(0);
    let vocab = model.vocab_size() as u32;
    let ids: Vec<u32> = (0..args.batch * args.seq).map(|_| rng.random_range(0..vocab)).collect();
    let ids = Tensor::from_vec(ids, (args.batch, args.seq), model.device())?;

    let forward_s = time(1, 3, || {
        model.forward(&ids, None, false)?;
        Ok(())
    })?;

    let lr = if args.full_ft { 1e-5 } else { 1e-4 };
    let mut opt = AdamW::new(vars, AdamWParams { lr, weight_decay: 0.01, ..Default::default() })?;
    // As transformers does with `labels = input_ids`: every position is supervised, and the
    // loss is that of predicting token t + 1 from position t (task 2.2's causal_lm_loss).
    let batch = Batch { input_ids: ids.clone(), labels: ids.to_dtype(DType::I64)?, attention_mask: ids.ones_like()? };
    let mut last_loss = f32::NAN;
    // Per-phase times of the timed steps: forward + loss, backward, optimizer.
    let mut phases: Vec<[f64; 3]> = Vec::new();
    let step_s = time(args.warmup, args.steps, || {
        let t = Instant::now();
        let (loss, _) = causal_lm_loss(model, &batch, true)?;
        last_loss = loss.to_scalar::<f32>()?;
        if !last_loss.is_finite() {
            bail!("loss is {last_loss}");
        }
        let forward = t.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        // The graph (every activation) is freed here, as it is at the end of a training step.
        drop(loss);
        let backward = t.elapsed().as_secs_f64() - forward;
        opt.step(&grads)?;
        phases.push([forward, backward, t.elapsed().as_secs_f64() - forward - backward]);
        Ok(())
    })?;
    // The medians of the timed steps only (the warm-up steps come first).
    let timed = &phases[phases.len() - args.steps..];
    let phase = |i: usize| median(timed.iter().map(|p| p[i]).collect());
    let tokens = (args.batch * args.seq) as f64;
    // Where the figure comes from: this host's matmul speed at the step's shapes (the linear
    // layers and the head), and the fraction of it the step reached. A LoRA step multiplies by
    // every weight twice (forward, input gradient), full fine-tuning three times (+ the weight
    // gradient); attention and the adapters' thin matmuls are not counted.
    let host = lora_from_scratch::compute::host::Host::detect();
    let shapes = matmul_shapes(model)?;
    let step_flops = lora_from_scratch::compute::host::forward_flops(args.batch * args.seq, &shapes)
        * if args.full_ft { 3.0 } else { 2.0 };
    let gflops = if model.device().is_cpu() {
        Some(lora_from_scratch::compute::host::matmul_gflops(args.batch * args.seq, &shapes, args.bf16))
    } else {
        None
    };
    let line = json!({
        "impl": "lora-from-scratch", "device": if loaded.model.device().is_cuda() { "cuda" } else { "cpu" }, "model": args.model, "batch": args.batch, "seq": args.seq,
        "mode": if args.full_ft { "full_ft" } else { "lora" }, "rank": args.rank, "targets": targets,
        "dtype": if args.bf16 { "bfloat16" } else { "float32" }, "bf16_kernel": args.bf16 && lora_from_scratch::compute::bf16::kernel_in_use(), "trainable_params": trainable,
        "load_s": load_s, "rss_after_load_mib": rss_after_load,
        "forward_tokens_per_s": tokens / forward_s,
        "step_s_median": step_s, "tokens_per_s": tokens / step_s, "loss": last_loss,
        "forward_s": phase(0), "backward_s": phase(1), "optimizer_s": phase(2),
        "peak_rss_mib": peak_rss_mib(),
        "threads": candle_core::utils::get_num_threads(), "alloc_tuned": alloc_tuned,
        "host": host, "matmul_gflops": gflops, "step_matmul_gflop": step_flops / 1e9,
        "roofline_fraction": gflops.map(|g| step_flops / (g * 1e9) / step_s),
    });
    println!("{line}");
    Ok(())
}
