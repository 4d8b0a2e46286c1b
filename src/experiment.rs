//! The tutorial's experiments: many training runs on one task, one JSON result per run, and a
//! report that compares them.
//!
//! A sweep is a list of [`RunSpec`]s. [`run_cached`] runs one unless its `result.json` already
//! exists (so an interrupted sweep resumes where it stopped), and [`write_report`] turns the
//! results into a markdown table and plots. `examples/experiments.rs` defines the three sweeps.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use tokenizers::Tokenizer;

use crate::generate::GenerateOptions;
use crate::history::TrainHistory;
use crate::io::write_atomic;
use crate::models::CausalLm;
use crate::{corpus_bleu, evaluate_generation, Generated};
use crate::{LoraError, Result};

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
    /// Llama's names, or GPT-2's, whose q, k and v are slices of one `c_attn` that a model loaded
    /// with `split_qkv` adapts one by one.
    pub fn for_gpt2(gpt2: bool) -> Self {
        if gpt2 {
            ModuleNames { q: "c_attn.q", k: "c_attn.k", v: "c_attn.v", o: "attn.c_proj", ffn: &["c_fc", "mlp.c_proj"] }
        } else {
            ModuleNames {
                q: "q_proj",
                k: "k_proj",
                v: "v_proj",
                o: "o_proj",
                ffn: &["gate_proj", "up_proj", "down_proj"],
            }
        }
    }
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

/// Greedy generations for E2E meaning representations `mrs` (with their references), scored with
/// corpus BLEU-4; the generations are written to `out` (JSONL). Each output is cut at its first
/// line, as the E2E references are one sentence.
pub fn e2e_bleu(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    mrs: &[(String, Vec<String>)],
    gen: &GenerateOptions,
    out: &Path,
) -> Result<(f64, Vec<Generated>)> {
    let prompts: Vec<(String, Vec<String>)> =
        mrs.iter().map(|(mr, refs)| (crate::data::e2e_prompt(mr), refs.clone())).collect();
    let first_line = |t: &str| t.lines().next().unwrap_or("").trim().to_string();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    }
    let generated = evaluate_generation(model, tok, &prompts, gen, &first_line, out)?;
    let hyps: Vec<String> = generated.iter().map(|g| g.output.clone()).collect();
    let refs: Vec<Vec<String>> = generated.iter().map(|g| g.references.clone()).collect();
    Ok((corpus_bleu(&hyps, &refs), generated))
}

/// Where a run's files go: `dir/<name>/`.
pub fn run_dir(dir: &Path, spec: &RunSpec) -> PathBuf {
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

/// Mean of the last `n` training losses.
pub fn final_loss(history: &TrainHistory, n: usize) -> f64 {
    let tail: Vec<f64> = history.train.iter().rev().take(n).map(|r| r.loss).collect();
    tail.iter().sum::<f64>() / tail.len().max(1) as f64
}

/// Reset the kernel's peak-RSS mark of this process, so the next [`peak_rss_mib`] covers one run
/// of a sweep (Linux; elsewhere the peak stays the process's). The heap's free memory goes back
/// to the OS first: [`crate::alloc::keep_freed_memory`] keeps it mapped, and the mark restarts
/// from what is mapped.
pub fn reset_peak_rss() {
    crate::alloc::release_free_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process since start or the last [`reset_peak_rss`] (MiB).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn method_label(m: &Method) -> String {
    match m {
        Method::Lora { targets, rank, alpha } => format!("LoRA r{rank} a{alpha} on {}", targets.join(", ")),
        Method::FullFineTuning => "full fine-tuning".into(),
        Method::Mixed { targets, rank, alpha, modules_to_save, loraplus_ratio, full_scale } => {
            let mut s = format!("LoRA r{rank} a{alpha} on {}", targets.join(", "));
            if *loraplus_ratio != 1.0 {
                s.push_str(&format!(", B at {loraplus_ratio}x lr (LoRA+)"));
            }
            if !modules_to_save.is_empty() {
                s.push_str(&format!(", {} in full at {full_scale}x lr", modules_to_save.join(", ")));
            }
            s
        }
    }
}

/// The report's table: one row per run.
pub fn markdown_table(results: &[RunResult]) -> String {
    let mut s = String::from(
        "| run | method | lr | trainable params | adapter | train s | tokens/s | peak MiB | final train loss | best val loss | val ppl | BLEU |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let adapter = r.adapter_bytes.map_or("-".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
        s.push_str(&format!(
            "| {} | {} | {:.0e} | {} | {} | {:.0} | {:.0} | {:.0} | {:.4} | {:.4} | {:.2} | {:.2} |\n",
            r.spec.name,
            match &r.spec.base {
                Some(base) => format!("{}, {base} base", method_label(&r.spec.method)),
                None => method_label(&r.spec.method),
            },
            r.spec.lr,
            crate::report::thousands(r.trainable_params),
            adapter,
            r.train_s,
            r.tokens_per_s,
            r.peak_rss_mib,
            r.final_train_loss,
            r.best_val_loss,
            r.val_perplexity,
            r.bleu,
        ));
    }
    s
}

/// A numeric setting to plot BLEU against: its label and how to read it from a result (`None`
/// for a run that lacks it).
pub type XAxis<'a> = (&'a str, &'a dyn Fn(&RunResult) -> Option<f64>);

/// A plot to draw: its file name and how.
type Plot<'a> = (String, Box<dyn Fn(&Path) -> PlotResult + 'a>);

/// Write `report.md` (settings, table, sample generations), `table.md` (the table alone) and the
/// plots into `dir`:
/// `val_loss.png` (validation loss against step, one line per run), `quality_vs_params.png`
/// (BLEU against trainable parameters) and, when `x_of` gives every run a number (the rank),
/// `quality_vs_x.png`.
pub fn write_report(
    dir: &Path,
    title: &str,
    notes: &str,
    results: &[RunResult],
    x_of: Option<XAxis>,
) -> Result<PathBuf> {
    let Some(first) = results.first() else {
        return Err(LoraError::config("report", "has no results to show"));
    };
    let mut md = format!("# {title}\n\n{notes}\n\n");
    md.push_str(&format!(
        "Model `{}`; every run: {} steps (warmup 10, cosine decay), batch {}, seed {}, BLEU-4 of greedy outputs on {} validation MRs; validation loss every {} steps.\n\n",
        first.model, first.spec.steps, first.spec.batch_size, first.spec.seed, first.spec.eval_mrs, first.spec.eval_every
    ));
    md.push_str(&markdown_table(results));
    md.push_str("\n![validation loss](val_loss.png)\n\n![BLEU against trainable parameters](quality_vs_params.png)\n");
    let plots: Vec<Plot> = {
        let mut p: Vec<Plot> = vec![
            ("val_loss.png".into(), Box::new(|path: &Path| draw_val_loss(results, path))),
            (
                "quality_vs_params.png".into(),
                Box::new(|path: &Path| {
                    let pts: Vec<(f64, f64, String)> = results
                        .iter()
                        .map(|r| ((r.trainable_params.max(1) as f64).log10(), r.bleu, r.spec.name.clone()))
                        .collect();
                    draw_points(&pts, "BLEU against trainable parameters", "log10(trainable parameters)", path)
                }),
            ),
        ];
        if let Some((label, f)) = x_of {
            let pts: Vec<(f64, f64, String)> =
                results.iter().filter_map(|r| f(r).map(|x| (x, r.bleu, r.spec.name.clone()))).collect();
            if pts.len() == results.len() {
                md.push_str(&format!("\n![BLEU against {label}](quality_vs_x.png)\n"));
                let label = label.to_string();
                p.push((
                    "quality_vs_x.png".into(),
                    Box::new(move |path: &Path| draw_points(&pts, &format!("BLEU against {label}"), &label, path)),
                ));
            }
        }
        p
    };
    md.push_str("\n## Sample generations\n\n");
    if let Some((mr, _)) = first.samples.first() {
        md.push_str(&format!("For `{mr}`:\n\n"));
        for r in results {
            if let Some((_, text)) = r.samples.first() {
                md.push_str(&format!("- **{}**: {}\n", r.spec.name, text));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    for (name, draw) in plots {
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp.png"));
        draw(&tmp).map_err(|e| LoraError::file(&path, format!("cannot draw: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| LoraError::io(&path, e))?;
    }
    // The table alone as well, for a book chapter to include.
    write_atomic(&dir.join("table.md"), markdown_table(results).as_bytes())?;
    let path = dir.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 8] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(255, 140, 0), RGBColor(128, 0, 128)];

fn draw_val_loss(results: &[RunResult], path: &Path) -> PlotResult {
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = results.iter().flat_map(|r| r.history.val.iter().map(|v| (v.step as f64, v.val_loss)));
    let (xmax, lo, hi) =
        points.fold((1.0f64, f64::INFINITY, f64::NEG_INFINITY), |(x, a, b), (s, l)| (x.max(s), a.min(l), b.max(l)));
    let (lo, hi) = if lo.is_finite() { (lo * 0.97, hi * 1.03 + 1e-9) } else { (0.0, 1.0) };
    let mut chart = ChartBuilder::on(&root)
        .caption("validation loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xmax, lo..hi)?;
    chart.configure_mesh().x_desc("step").y_desc("cross-entropy").draw()?;
    for (i, r) in results.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(r.history.val.iter().map(|v| (v.step as f64, v.val_loss)), c.stroke_width(2)))?
            .label(r.spec.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    root.present()?;
    Ok(())
}

fn draw_points(pts: &[(f64, f64, String)], title: &str, x_desc: &str, path: &Path) -> PlotResult {
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1, y0, y1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY), |(a, b, c, d), (x, y, _)| {
            (a.min(*x), b.max(*x), c.min(*y), d.max(*y))
        });
    let pad = |lo: f64, hi: f64| {
        let m = ((hi - lo) * 0.1).max(0.5);
        (lo - m, hi + m)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.configure_mesh().x_desc(x_desc).y_desc("BLEU-4").draw()?;
    chart.draw_series(pts.iter().map(|(x, y, _)| Circle::new((*x, *y), 5, BLUE.filled())))?;
    chart.draw_series(pts.iter().map(|(x, y, name)| Text::new(name.clone(), (*x, *y), ("sans-serif", 15))))?;
    root.present()?;
    Ok(())
}

/// Make every weight of `model` trainable (full fine-tuning) and return them all as named `Var`s.
pub fn unfreeze_all(model: &mut dyn CausalLm) -> Result<Vec<(String, candle_core::Var)>> {
    if let Some((name, _)) = model.quantized_params().first() {
        return Err(LoraError::config("full fine-tuning", format!("`{name}` is quantized; start from a dense model")));
    }
    let mut vars = Vec::new();
    for (name, slot) in model.linears_mut() {
        let l = match slot {
            crate::LinearSlot::Linear(l) => l,
            crate::LinearSlot::Lora(_) => {
                let why = format!("`{name}` carries an adapter; start from a plain model");
                return Err(LoraError::config("full fine-tuning", why));
            }
            crate::LinearSlot::Quantized(_) => {
                let why = format!("`{name}` is quantized; start from a dense model");
                return Err(LoraError::config("full fine-tuning", why));
            }
            crate::LinearSlot::PerRow(_) => {
                let why = format!("`{name}` serves several adapters; start from a plain model");
                return Err(LoraError::config("full fine-tuning", why));
            }
        };
        l.weight.unfreeze()?;
        vars.push((format!("{name}.weight"), l.weight.var().expect("just unfrozen").clone()));
        if let Some(b) = &mut l.bias {
            b.unfreeze()?;
            vars.push((format!("{name}.bias"), b.var().expect("just unfrozen").clone()));
        }
    }
    for (name, p) in model.params_mut() {
        p.unfreeze()?;
        vars.push((name, p.var().expect("just unfrozen").clone()));
    }
    Ok(vars)
}

/// Full fine-tuning with the same loop as `train_lora` (task 2.2): AdamW over every weight, the
/// same batch order, schedule, clipping and validation, so a sweep compares like with like. No
/// checkpoints: a full model is 540 MB a copy, and the sweep reruns an interrupted run instead.
pub fn train_full(
    model: &mut dyn CausalLm,
    train: &[crate::Example],
    val: &[crate::Example],
    pad_id: u32,
    cfg: &crate::TrainConfig,
) -> Result<TrainHistory> {
    let vars = unfreeze_all(model)?;
    let group = crate::optim::ParamGroup { name: "all".into(), vars, lr_scale: 1.0 };
    crate::train_groups::train_groups(model, vec![group], train, val, pad_id, cfg, &mut |_| Ok(()))
}
