//! Divergence, told apart from training. A learning rate far too high does not always give a NaN
//! loss: at 1e6 the loss climbs from 2.5 to 16 and the gradients vanish (a saturated softmax), at
//! 1e30 the loss sits at ln(vocabulary). Without a check such a run "succeeds" and keeps its least
//! bad adapter as the best. The training loop (task 2.2) calls [`DivergenceGuard::after_step`]
//! after every optimizer step and [`DivergenceGuard::after_eval`] after every validation; either
//! returns an error that stops the run, names the likely cause and the best step kept.

use crate::error::{LoraError, Result};

/// Validation losses this far above the best (both: 1.5 times it and 0.5 nats more) count as
/// far above; normal noise and slow overfitting stay well below.
const FAR_FACTOR: f64 = 1.5;
const FAR_MARGIN: f64 = 0.5;
/// How many evaluations in a row may be far above the best before the run is stopped.
const FAR_EVALS: usize = 2;
/// How many steps in a row may have a zero gradient norm (nothing left to learn from).
const ZERO_NORM_STEPS: usize = 3;

/// The state the checks keep across a run.
#[derive(Clone, Debug)]
pub struct DivergenceGuard {
    peak_lr: f64,
    far_in_a_row: usize,
    zero_norms_in_a_row: usize,
    /// The lowest and the latest training loss: a validation loss far above its best counts only
    /// while the training loss is far above its own best too. Overfitting raises the first and
    /// lowers the second; divergence raises both.
    min_train: f64,
    last_train: f64,
}

impl DivergenceGuard {
    /// A guard for a fresh run whose schedule peaks at `peak_lr` (named in the error).
    pub fn new(peak_lr: f64) -> Self {
        DivergenceGuard {
            peak_lr,
            far_in_a_row: 0,
            zero_norms_in_a_row: 0,
            min_train: f64::INFINITY,
            last_train: f64::NAN,
        }
    }

    /// A guard for a run that resumes with `history`: the steps and validations it has seen are
    /// replayed, so a resumed run stops where an uninterrupted one would.
    pub(crate) fn from_history(peak_lr: f64, history: &crate::train::history::TrainHistory) -> Self {
        let mut guard = DivergenceGuard::new(peak_lr);
        let mut best: Option<(usize, f64)> = None;
        let (mut steps, mut vals) = (history.train.iter().peekable(), history.val.iter());
        for v in vals.by_ref() {
            while let Some(r) = steps.next_if(|r| r.step <= v.step) {
                let _ = guard.after_step(r.step, r.loss, r.grad_norm, best);
            }
            if best.is_none_or(|(_, b)| v.val_loss < b) {
                best = Some((v.step, v.val_loss));
            }
            let _ = guard.after_eval(v.step, v.val_loss, best);
        }
        for r in steps {
            let _ = guard.after_step(r.step, r.loss, r.grad_norm, best);
        }
        guard
    }

    fn stop(&self, step: usize, what: String, best: Option<(usize, f64)>) -> LoraError {
        let kept = match best {
            Some((0, loss)) => format!(
                "the best is still the starting point (validation loss {loss:.4} at step 0), so nothing worse was saved as best"
            ),
            Some((step, loss)) => format!("the best weights, validation loss {loss:.4} at step {step}, are kept"),
            None => "no weights were kept".to_string(),
        };
        LoraError::Diverged { step, loss: self.last_train, peak_lr: self.peak_lr, what, kept }
    }

    /// After optimizer step `step` (from 1), with its training loss and the gradient norm before
    /// clipping: a non-finite norm, or a zero norm several steps in a row, stops the run.
    pub fn after_step(&mut self, step: usize, loss: f64, grad_norm: f64, best: Option<(usize, f64)>) -> Result<()> {
        self.last_train = loss;
        self.min_train = self.min_train.min(loss);
        if !grad_norm.is_finite() {
            return Err(self.stop(step, format!("the gradient norm is {grad_norm} at step {step}"), best));
        }
        self.zero_norms_in_a_row = if grad_norm == 0.0 { self.zero_norms_in_a_row + 1 } else { 0 };
        if self.zero_norms_in_a_row >= ZERO_NORM_STEPS {
            return Err(self.stop(
                step,
                format!(
                    "the gradient norm is 0 for {ZERO_NORM_STEPS} steps in a row, up to step {step} (nothing is learned any more)"
                ),
                best,
            ));
        }
        Ok(())
    }

    /// After the validation at `step`, given the best (step, loss) so far, this one included: a
    /// non-finite loss stops the run at once, and a loss far above the best, while the training
    /// loss is far above its own best too, for several evaluations in a row.
    pub fn after_eval(&mut self, step: usize, val_loss: f64, best: Option<(usize, f64)>) -> Result<()> {
        if !val_loss.is_finite() {
            return Err(self.stop(step, format!("the validation loss is {val_loss} at step {step}"), best));
        }
        let Some((_, best_loss)) = best else { return Ok(()) };
        let far = |x: f64, low: f64| x > FAR_FACTOR * low && x > low + FAR_MARGIN;
        // A step's training loss is one batch's; NaN (no step yet) counts as not far.
        let far = far(val_loss, best_loss) && far(self.last_train, self.min_train);
        self.far_in_a_row = if far { self.far_in_a_row + 1 } else { 0 };
        if self.far_in_a_row >= FAR_EVALS {
            return Err(self.stop(
                step,
                format!(
                    "the validation loss is {val_loss:.4} at step {step}, far above the best {best_loss:.4}, \
                     for {FAR_EVALS} evaluations in a row, and the training loss rose with it"
                ),
                best,
            ));
        }
        Ok(())
    }

    /// Whether the latest validation was far above the best: the run may be diverging, so its
    /// weights should not overwrite a good checkpoint.
    pub fn suspect(&self) -> bool {
        self.far_in_a_row > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_that_climbs_and_stays_up_stops_the_run_naming_the_rate_and_the_best() {
        let mut g = DivergenceGuard::new(1e6);
        let best = Some((0, 2.5));
        g.after_step(1, 3.0, 1.0, best).unwrap();
        g.after_step(20, 20.0, 1.0, best).unwrap();
        g.after_eval(20, 16.0, best).unwrap(); // once may be a spike
        assert!(g.suspect(), "a far validation is suspect: its checkpoint is not written");
        let err = g.after_eval(40, 15.0, best).unwrap_err();
        // A variant a caller can match, with the step, the last training loss and the peak rate.
        assert!(
            matches!(err, LoraError::Diverged { step: 40, loss, peak_lr, .. } if loss == 20.0 && peak_lr == 1e6),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("15.0000 at step 40") && msg.contains("1e6"), "{msg}");
        assert!(msg.contains("step 0") && msg.contains("nothing worse was saved"), "{msg}");
    }

    #[test]
    fn noise_overfitting_and_a_single_spike_do_not_stop_it() {
        let mut g = DivergenceGuard::new(2e-4);
        for (step, loss) in [(20, 2.0), (40, 2.2), (60, 2.6), (80, 6.0), (100, 2.4), (120, 3.2)] {
            g.after_eval(step, loss, Some((20, 2.0))).unwrap();
        }
        for step in 1..10 {
            g.after_step(step, 2.0, if step % 3 == 0 { 0.0 } else { 0.5 }, None).unwrap();
        }
        // Overfitting: the validation loss climbs far above its best while the training loss falls.
        let mut g = DivergenceGuard::new(2e-4);
        for (step, train, val) in [(20, 2.0, 1.8), (40, 1.0, 3.0), (60, 0.5, 3.5), (80, 0.2, 4.0)] {
            g.after_step(step, train, 1.0, None).unwrap();
            g.after_eval(step, val, Some((20, 1.8))).unwrap();
        }
        assert!(!g.suspect());
    }

    #[test]
    fn vanished_or_broken_gradients_stop_it() {
        let mut g = DivergenceGuard::new(1e30);
        g.after_step(1, 10.8, 0.0, None).unwrap();
        g.after_step(2, 10.8, 0.0, None).unwrap();
        let msg = g.after_step(3, 10.8, 0.0, Some((0, 2.5))).unwrap_err().to_string();
        assert!(msg.contains("0 for 3 steps in a row, up to step 3") && msg.contains("1e30"), "{msg}");
        let msg = DivergenceGuard::new(1.0).after_step(7, 2.0, f64::INFINITY, Some((4, 1.0))).unwrap_err().to_string();
        assert!(msg.contains("inf at step 7") && msg.contains("1.0000 at step 4, are kept"), "{msg}");
        let msg = DivergenceGuard::new(1.0).after_eval(8, f64::NAN, Some((4, 1.0))).unwrap_err().to_string();
        assert!(msg.contains("validation loss is NaN at step 8"), "a NaN validation stops at once: {msg}");
    }

    #[test]
    fn a_resumed_guard_remembers_what_it_saw() {
        use crate::train::history::{EvalRecord, StepRecord, TrainHistory};
        let step = |step, loss| StepRecord { step, loss, lr: 1.0, grad_norm: 1.0, tokens: 1, tokens_per_s: 1.0 };
        let history = TrainHistory {
            train: vec![step(1, 3.0), step(2, 20.0)],
            val: vec![EvalRecord { step: 0, val_loss: 2.5 }, EvalRecord { step: 2, val_loss: 16.0 }],
            best: Some((0, 2.5)),
        };
        let mut g = DivergenceGuard::from_history(1.0, &history);
        assert!(g.suspect(), "the far validation at step 2 is remembered");
        g.after_step(3, 21.0, 1.0, history.best).unwrap();
        assert!(g.after_eval(4, 15.0, history.best).is_err(), "the second far validation stops the resumed run");
    }
}
