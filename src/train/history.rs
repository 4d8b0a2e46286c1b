//! What a training run records, saved as JSON and drawn as `training_history.png` (train and
//! validation loss, and the learning-rate schedule), like the tutorial's `plot_training_history`.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};
use crate::io::write_atomic;

/// One optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based: the number of updates done after this one.
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Supervised (response) tokens in the step.
    pub tokens: usize,
    pub tokens_per_s: f64,
}

/// One validation pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub val_loss: f64,
}

/// Everything a run recorded, and its best validation point.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainHistory {
    pub train: Vec<StepRecord>,
    pub val: Vec<EvalRecord>,
    /// (step, validation loss) of the adapter kept as best.
    pub best: Option<(usize, f64)>,
}

impl TrainHistory {
    /// Write the history as JSON, atomically.
    pub(crate) fn save_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("history serializes");
        write_atomic(path, json.as_bytes())
    }

    /// Draw the loss curves and the learning rate to a PNG (drawn beside it, then renamed, so
    /// an interrupted run never leaves half a picture).
    pub fn plot(&self, path: &Path) -> Result<()> {
        let name = path.file_name().map_or("plot".into(), |n| n.to_string_lossy().to_string());
        let tmp = path.with_file_name(format!(".{name}.tmp.png"));
        draw(self, &tmp).map_err(|e| LoraError::file(path, format!("cannot draw the training history: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| LoraError::io(path, e))
    }
}

/// The plot's size in pixels.
const PLOT_SIZE: (u32, u32) = (1000, 420);

fn draw(h: &TrainHistory, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    draw_on(h, BitMapBackend::new(path, PLOT_SIZE))
}

fn draw_on(h: &TrainHistory, backend: BitMapBackend) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(560);
    let last = h.train.last().map_or(1, |r| r.step).max(1) as f64;
    let losses = h.train.iter().map(|r| r.loss).chain(h.val.iter().map(|r| r.val_loss)).filter(|x| x.is_finite());
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (lo, hi) = if lo.is_finite() { (lo.min(hi) * 0.95, hi * 1.05 + 1e-9) } else { (0.0, 1.0) };
    let mut chart = ChartBuilder::on(&left)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..last, lo..hi)?;
    chart.configure_mesh().x_desc("step").y_desc("cross-entropy").draw()?;
    chart
        .draw_series(LineSeries::new(h.train.iter().map(|r| (r.step as f64, r.loss)), &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(h.val.iter().map(|r| (r.step as f64, r.val_loss)), RED.stroke_width(2)))?
        .label("validation")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    // Each validation point as a marker too: a run validated once has no line to draw.
    chart.draw_series(h.val.iter().map(|r| Circle::new((r.step as f64, r.val_loss), 4, RED.filled())))?;
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;

    let max_lr = h.train.iter().map(|r| r.lr).fold(0.0, f64::max).max(1e-12);
    let mut lr = ChartBuilder::on(&right)
        .caption("learning rate", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..last, 0.0..max_lr * 1.05)?;
    lr.configure_mesh().x_desc("step").y_label_formatter(&|v| format!("{v:.1e}")).draw()?;
    lr.draw_series(LineSeries::new(h.train.iter().map(|r| (r.step as f64, r.lr)), &GREEN))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red_pixels(h: &TrainHistory) -> usize {
        let (w, ht) = PLOT_SIZE;
        let mut buf = vec![0u8; (w * ht * 3) as usize];
        draw_on(h, BitMapBackend::with_buffer(&mut buf, PLOT_SIZE)).unwrap();
        buf.chunks(3).filter(|p| p == &[255, 0, 0]).count()
    }

    /// A single validation point (a short run) is still drawn: as a marker, not a line of one point.
    #[test]
    fn a_single_validation_point_is_drawn() {
        let train = (1..=4)
            .map(|step| StepRecord {
                step,
                loss: 3.0 - step as f64 * 0.1,
                lr: 1e-4,
                grad_norm: 1.0,
                tokens: 10,
                tokens_per_s: 1.0,
            })
            .collect();
        let without = TrainHistory { train, ..Default::default() };
        let mut with = without.clone();
        with.val.push(EvalRecord { step: 2, val_loss: 2.9 });
        let (a, b) = (red_pixels(&without), red_pixels(&with));
        assert!(b >= a + 30, "one validation point adds {} red pixels", b - a);
    }
}
