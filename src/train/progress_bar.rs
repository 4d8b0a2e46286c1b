//! The training progress bar (indicatif): steps done, elapsed and remaining time, and a message
//! with the loss, learning rate and tokens/s.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` steps starting at `start`; hidden when `show` is false (tests, CI logs).
pub fn bar(total: usize, start: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .expect("the template is valid"),
    );
    bar.set_position(start as u64);
    bar
}
