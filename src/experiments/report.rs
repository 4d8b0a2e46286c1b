//! The report of a sweep: a markdown table of the runs and plots of their validation loss,
//! quality and cost.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{LoraError, Result};
use crate::experiments::spec::{Method, RunResult};
use crate::io::write_atomic;

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
fn markdown_table(results: &[RunResult]) -> String {
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
            crate::lora::report::thousands(r.trainable_params),
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
type XAxis<'a> = (&'a str, &'a dyn Fn(&RunResult) -> Option<f64>);

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
        return Err(LoraError::input("report", "has no results to show"));
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
