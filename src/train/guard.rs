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
}

impl DivergenceGuard {
    /// A guard for a run whose schedule peaks at `peak_lr` (named in the error).
    pub fn new(peak_lr: f64) -> Self {
        DivergenceGuard { peak_lr, far_in_a_row: 0, zero_norms_in_a_row: 0 }
    }

    fn stop(&self, what: String, best: Option<(usize, f64)>) -> LoraError {
        let kept = match best {
            Some((0, loss)) => format!("the best is still the starting point (validation loss {loss:.4} at step 0), so nothing worse was saved as best"),
            Some((step, loss)) => format!("the best weights, validation loss {loss:.4} at step {step}, are kept"),
            None => "no weights were kept".to_string(),
        };
        LoraError::config(
            "training",
            format!(
                "diverged: {what}; the learning rate (peak {:e}) is the likely cause, try one 10 times lower; {kept}",
                self.peak_lr
            ),
        )
    }

    /// After optimizer step `step` (from 1), with the gradient norm before clipping: a
    /// non-finite norm, or a zero norm several steps in a row, stops the run.
    pub fn after_step(&mut self, step: usize, grad_norm: f64, best: Option<(usize, f64)>) -> Result<()> {
        if !grad_norm.is_finite() {
            return Err(self.stop(format!("the gradient norm is {grad_norm} at step {step}"), best));
        }
        self.zero_norms_in_a_row = if grad_norm == 0.0 { self.zero_norms_in_a_row + 1 } else { 0 };
        if self.zero_norms_in_a_row >= ZERO_NORM_STEPS {
            return Err(self.stop(
                format!("the gradient norm is 0 for {ZERO_NORM_STEPS} steps in a row, up to step {step} (nothing is learned any more)"),
                best,
            ));
        }
        Ok(())
    }

    /// After the validation at `step`, given the best (step, loss) so far, this one included: a
    /// loss far above the best for several evaluations in a row stops the run.
    pub fn after_eval(&mut self, step: usize, val_loss: f64, best: Option<(usize, f64)>) -> Result<()> {
        let Some((_, best_loss)) = best else { return Ok(()) };
        let far = !val_loss.is_finite() || (val_loss > FAR_FACTOR * best_loss && val_loss > best_loss + FAR_MARGIN);
        self.far_in_a_row = if far { self.far_in_a_row + 1 } else { 0 };
        if self.far_in_a_row >= FAR_EVALS {
            return Err(self.stop(
                format!(
                    "the validation loss is {val_loss:.4} at step {step}, far above the best {best_loss:.4}, \
                     for {FAR_EVALS} evaluations in a row"
                ),
                best,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_that_climbs_and_stays_up_stops_the_run_naming_the_rate_and_the_best() {
        let mut g = DivergenceGuard::new(1e6);
        let best = Some((0, 2.5));
        g.after_eval(20, 16.0, best).unwrap(); // once may be a spike
        let msg = g.after_eval(40, 15.0, best).unwrap_err().to_string();
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
            g.after_step(step, if step % 3 == 0 { 0.0 } else { 0.5 }, None).unwrap();
        }
    }

    #[test]
    fn vanished_or_broken_gradients_stop_it() {
        let mut g = DivergenceGuard::new(1e30);
        g.after_step(1, 0.0, None).unwrap();
        g.after_step(2, 0.0, None).unwrap();
        let msg = g.after_step(3, 0.0, Some((0, 2.5))).unwrap_err().to_string();
        assert!(msg.contains("0 for 3 steps in a row, up to step 3") && msg.contains("1e30"), "{msg}");
        let msg = DivergenceGuard::new(1.0).after_step(7, f64::INFINITY, Some((4, 1.0))).unwrap_err().to_string();
        assert!(msg.contains("inf at step 7") && msg.contains("1.0000 at step 4, are kept"), "{msg}");
    }
}
