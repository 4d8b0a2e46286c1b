//! One run of the E2E experiments, shared by `examples/experiments.rs` and `examples/qlora.rs`:
//! load the model, quantize its base if the spec asks (QLoRA), inject LoRA or unfreeze every
//! weight, train with `train_lora`'s loop, and measure time, memory, loss, perplexity and BLEU.

use std::path::PathBuf;
use std::sync::Arc;

use crate::compute::quantized::QuantizedWeight;
use crate::error::{LoraError, Result};
use crate::experiments::e2e_bleu::e2e_bleu;
use crate::experiments::full::train_full;
use crate::experiments::memory::{peak_rss_mib, reset_peak_rss};
use crate::experiments::spec::{final_loss, run_dir, Method};
use crate::experiments::spec::{RunResult, RunSpec};
use crate::inference::generate::GenerateOptions;
use crate::lora::config::LoraConfig;
use crate::models::gguf::GgufFile;
use crate::models::load::{load_model, LoadOptions, LoadedModel};
use crate::qlora::base::{base_bytes, quantize_base, use_quantized_weights, BaseQuantization};
use crate::tasks::t03_inject::{count_parameters, inject_lora};
use crate::tasks::t04_save_load::load_lora_weights;
use crate::tasks::t05_data::Example;
use crate::tasks::t06_train::{train_lora, Decay, Schedule, TrainConfig};
use crate::tasks::t07_eval::perplexity;
use crate::train::checkpoint::best_adapter_dir;
use tokenizers::Tokenizer;

/// What every run of a sweep shares: the model, the data and where runs go.
pub struct E2eContext<'a> {
    /// Hub id, folder or .gguf.
    pub model: String,
    pub load: LoadOptions,
    /// The sweep's folder; each run writes `out/<name>/`.
    pub out: PathBuf,
    pub train: &'a [Example],
    pub val: &'a [Example],
    /// (MR, references) scored with BLEU after training.
    pub mrs: &'a [(String, Vec<String>)],
    pub gen: GenerateOptions,
    pub tok: &'a Tokenizer,
    pub eos: u32,
}

/// Load the model of `ctx` with the base `spec.base` asks for: as loaded (`None`), NF4 (`nf4`),
/// or the GGUF file's own quantized blocks (`gguf`, only for a model read from a .gguf file).
pub fn load_with_base(ctx: &E2eContext, base: Option<&str>) -> Result<LoadedModel> {
    let mut loaded = load_model(&ctx.model, &ctx.load)?;
    match base {
        None => {}
        Some("nf4") => {
            quantize_base(loaded.model.as_mut(), BaseQuantization::Nf4)?;
        }
        Some("gguf") => {
            if loaded.source.extension().is_none_or(|e| e != "gguf") {
                return Err(LoraError::file(
                    &loaded.source,
                    "is not a GGUF file: base `gguf` keeps a GGUF file's blocks",
                ));
            }
            let mut file = GgufFile::open(&loaded.source)?;
            let config = file.llama_config()?;
            let weights = file
                .quantized_linears(&config)?
                .into_iter()
                .map(|(n, w)| (n, Arc::new(w) as Arc<dyn QuantizedWeight>))
                .collect();
            use_quantized_weights(loaded.model.as_mut(), weights)?;
            if let Some(embed) = file.quantized_tensor("token_embd.weight")? {
                loaded.model.set_quantized_param("model.embed_tokens.weight", Arc::new(embed))?;
            }
        }
        Some(other) => return Err(LoraError::config("base", format!("`{other}`: expected nf4 or gguf"))),
    }
    // The dense copies the quantization replaced go back to the allocator for the activations.
    crate::compute::alloc::release_free_memory();
    Ok(loaded)
}

/// Train and measure one run of a sweep.
pub fn run_e2e(ctx: &E2eContext, spec: &RunSpec) -> Result<RunResult> {
    println!("\n== {} ==", spec.name);
    let mut loaded = load_with_base(ctx, spec.base.as_deref())?;
    // Peak memory of training and evaluation, after loading: a quantized base is loaded dense
    // and quantized layer by layer, a transient that says nothing about QLoRA's training.
    reset_peak_rss();
    let (base, base_f32, dense) = base_bytes(loaded.model.as_ref());
    let dir = run_dir(&ctx.out, spec);
    let cfg = TrainConfig {
        schedule: Schedule {
            peak_lr: spec.lr,
            warmup_steps: 10.min(spec.steps),
            total_steps: spec.steps,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        },
        batch_size: spec.batch_size,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        eval_every: spec.eval_every,
        out_dir: dir.clone(),
        seed: spec.seed,
        resume: false,
        stop_after: None,
        progress: true,
    };
    let t0 = std::time::Instant::now();
    let (history, trainable, adapter_bytes) = match &spec.method {
        Method::Lora { targets, rank, alpha } => {
            let lora =
                LoraConfig { target_modules: targets.clone(), seed: spec.seed, ..LoraConfig::new(*rank, *alpha, &[]) };
            crate::train::settings::check_adapter_fits(loaded.model.as_ref(), &lora)?;
            inject_lora(loaded.model.as_mut(), &lora)?;
            let trainable = count_parameters(loaded.model.as_ref()).trainable;
            let history = train_lora(loaded.model.as_mut(), &lora, ctx.train, ctx.val, ctx.eos, &cfg, &mut |_, _| {})?;
            let best = best_adapter_dir(&dir);
            load_lora_weights(loaded.model.as_mut(), &best)?;
            let file = best.join("adapter_model.safetensors");
            let bytes = std::fs::metadata(&file).map_err(|e| LoraError::io(&file, e))?.len();
            (history, trainable, Some(bytes))
        }
        Method::FullFineTuning => {
            let history = train_full(loaded.model.as_mut(), ctx.train, ctx.val, ctx.eos, &cfg)?;
            (history, count_parameters(loaded.model.as_ref()).trainable, None)
        }
        Method::Mixed { targets, rank, alpha, modules_to_save, loraplus_ratio, full_scale } => {
            let lora =
                LoraConfig { target_modules: targets.clone(), seed: spec.seed, ..LoraConfig::new(*rank, *alpha, &[]) };
            crate::train::settings::check_adapter_fits(loaded.model.as_ref(), &lora)?;
            inject_lora(loaded.model.as_mut(), &lora)?;
            let (m, r, s) = (modules_to_save, *loraplus_ratio, *full_scale);
            let history = crate::tasks::t11_mixed::train_mixed(
                loaded.model.as_mut(),
                &lora,
                m,
                r,
                s,
                ctx.train,
                ctx.val,
                ctx.eos,
                &cfg,
            )?;
            let trainable = count_parameters(loaded.model.as_ref()).trainable;
            let best = best_adapter_dir(&dir);
            crate::tasks::t11_mixed::load_mixed(loaded.model.as_mut(), &best)?;
            let file = best.join("adapter_model.safetensors");
            let bytes = std::fs::metadata(&file).map_err(|e| LoraError::io(&file, e))?.len();
            (history, trainable, Some(bytes))
        }
    };
    let train_s = t0.elapsed().as_secs_f64();
    let tokens: usize = history.train.iter().map(|r| r.tokens).sum();
    let val_perplexity = perplexity(loaded.model.as_mut(), ctx.val, spec.batch_size, ctx.eos)?;
    let (bleu, generated) =
        e2e_bleu(loaded.model.as_ref(), ctx.tok, ctx.mrs, &ctx.gen, &dir.join("generations.jsonl"))?;
    let result = RunResult {
        spec: spec.clone(),
        model: ctx.model.clone(),
        trainable_params: trainable,
        adapter_bytes,
        train_s,
        tokens_per_s: tokens as f64 / train_s,
        peak_rss_mib: peak_rss_mib(),
        final_train_loss: final_loss(&history, 10),
        best_val_loss: history.best.map_or(f64::NAN, |(_, l)| l),
        val_perplexity,
        bleu,
        samples: ctx.mrs.iter().zip(&generated).take(5).map(|((mr, _), g)| (mr.clone(), g.output.clone())).collect(),
        history,
        base_bytes: base + dense,
        base_bytes_f32: base_f32 + dense,
    };
    println!(
        "{}: {} trainable, {train_s:.0} s, val loss {:.4}, ppl {val_perplexity:.2}, BLEU {bleu:.2}",
        spec.name, result.trainable_params, result.best_val_loss
    );
    Ok(result)
}
