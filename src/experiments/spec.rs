//! The tutorial's experiments: many training runs on one task, one JSON result per run.
//!
//! A sweep is a list of [`RunSpec`]s. [`run_cached`] runs one unless its `result.json` already
//! exists (so an interrupted sweep resumes where it stopped); `experiments::report` turns the
//! results into a markdown table and plots. `examples/experiments.rs` defines the sweeps.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};
use crate::io::write_atomic;
use crate::train::history::TrainHistory;

/// What one run trains: LoRA on some modules, or every weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    Lora {
        targets: Vec<String>,
        rank: usize,
        alpha: f64,
    },
    FullFineTuning,
    /// LoRA with B at `loraplus_ratio` times the learning rate (LoRA+), and `modules_to_save`
    /// trained in full at `full_scale` times it (t11).
    Mixed {
        targets: Vec<String>,
        rank: usize,
        alpha: f64,
        modules_to_save: Vec<String>,
        loraplus_ratio: f64,
        full_scale: f64,
    },
}

/// The target-module names of the attention and MLP weights, for `inject_lora`.
#[derive(Clone, Copy, Debug)]
pub struct ModuleNames {
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub ffn: &'static [&'static str],
}

impl ModuleNames {
    /// Llama's (and SmolLM2's) names.
    pub const LLAMA: ModuleNames =
        ModuleNames { q: "q_proj", k: "k_proj", v: "v_proj", o: "o_proj", ffn: &["gate_proj", "up_proj", "down_proj"] };

    /// GPT-2's names, whose q, k and v are slices of one `c_attn` that a model loaded with
    /// `split_qkv` adapts one by one.
    pub const GPT2_SPLIT_QKV: ModuleNames =
        ModuleNames { q: "c_attn.q", k: "c_attn.k", v: "c_attn.v", o: "attn.c_proj", ffn: &["c_fc", "mlp.c_proj"] };
}

/// One configuration of a sweep. Everything but `name` and `method` is the same across a sweep,
/// so the runs differ only in what is being compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Short and file-name safe: `r8`, `q_v`, `full`.
    pub name: String,
    pub method: Method,
    pub steps: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub eval_every: usize,
    /// Validation MRs scored with BLEU after training.
    pub eval_mrs: usize,
    pub seed: u64,
    /// A quantized frozen base (QLoRA): `nf4`, or `gguf` for the GGUF file's own blocks.
    /// `None`: the base as loaded (f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Everything a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub spec: RunSpec,
    pub model: String,
    pub trainable_params: usize,
    /// Size of the saved adapter (`adapter_model.safetensors`); `None` for full fine-tuning.
    pub adapter_bytes: Option<u64>,
    pub train_s: f64,
    /// Supervised tokens per second of training.
    pub tokens_per_s: f64,
    /// Peak resident memory during the run (MiB).
    pub peak_rss_mib: f64,
    /// Mean training loss of the last 10 steps.
    pub final_train_loss: f64,
    pub best_val_loss: f64,
    pub val_perplexity: f64,
    pub bleu: f64,
    /// (MR, generated text) for the first validation MRs.
    pub samples: Vec<(String, String)>,
    pub history: TrainHistory,
    /// Bytes of the frozen base's weights as trained (quantized layers in their format), and
    /// the same weights in f32. 0 in results written before they were recorded.
    #[serde(default)]
    pub base_bytes: usize,
    #[serde(default)]
    pub base_bytes_f32: usize,
}

/// Where a run's files go: `dir/<name>/`.
pub(crate) fn run_dir(dir: &Path, spec: &RunSpec) -> PathBuf {
    dir.join(&spec.name)
}

/// The run's result, from `dir/<name>/result.json` if a finished run left one there (with the same
/// spec), else from `run` (whose result is then written atomically). A result whose spec differs
/// is an error rather than silently reused or overwritten.
pub fn run_cached(dir: &Path, spec: &RunSpec, run: impl FnOnce(&RunSpec) -> Result<RunResult>) -> Result<RunResult> {
    let path = run_dir(dir, spec).join("result.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| LoraError::io(&path, e))?;
        let result: RunResult =
            serde_json::from_str(&text).map_err(|e| LoraError::file(&path, format!("is not a run result: {e}")))?;
        if result.spec != *spec {
            return Err(LoraError::file(
                &path,
                "was written for different settings; delete it (or use another --out) to run again",
            ));
        }
        return Ok(result);
    }
    let result = run(spec)?;
    std::fs::create_dir_all(run_dir(dir, spec)).map_err(|e| LoraError::io(&path, e))?;
    let json = serde_json::to_string_pretty(&result).expect("a result serializes");
    write_atomic(&path, json.as_bytes())?;
    Ok(result)
}

/// What a sweep of runs gives: the results of the runs that finished, in order, and one line
/// for each run that diverged.
#[derive(Debug, Default)]
pub struct SweepOutcome {
    pub results: Vec<RunResult>,
    pub diverged: Vec<String>,
}

/// Each spec through [`run_cached`] with `run`. A run that diverges ([`LoraError::Diverged`],
/// the highest rate of a learning-rate sweep, say) is a finding, not a failure of the sweep: it
/// is recorded in [`SweepOutcome::diverged`] and the next run goes on. Any other error stops the
/// sweep and is returned.
pub fn run_sweep(
    dir: &Path,
    specs: &[RunSpec],
    mut run: impl FnMut(&RunSpec) -> Result<RunResult>,
) -> Result<SweepOutcome> {
    let mut outcome = SweepOutcome::default();
    for spec in specs {
        match run_cached(dir, spec, &mut run) {
            Ok(result) => outcome.results.push(result),
            Err(LoraError::Diverged { step, loss, peak_lr, what, .. }) => {
                let line = format!(
                    "{}: diverged at step {step} ({what}; training loss {loss:.4}, peak learning rate {peak_lr:e})",
                    spec.name
                );
                println!("{line}");
                outcome.diverged.push(line);
            }
            Err(other) => return Err(other),
        }
    }
    Ok(outcome)
}

/// Mean of the last `n` training losses.
pub(crate) fn final_loss(history: &TrainHistory, n: usize) -> f64 {
    let tail: Vec<f64> = history.train.iter().rev().take(n).map(|r| r.loss).collect();
    tail.iter().sum::<f64>() / tail.len().max(1) as f64
}
