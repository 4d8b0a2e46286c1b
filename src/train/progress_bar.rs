//! Training progress: on a terminal an indicatif bar (steps done, elapsed and remaining time, and
//! a message with the loss, learning rate and tokens/s); with stderr redirected (a log file, CI,
//! `nohup`) the same facts as plain lines, at most one every `LINE_EVERY`, since a bar that is
//! never drawn would leave a log silent for the whole run.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The longest a redirected run stays silent while training.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// Progress over a run's steps: a bar on a terminal, lines otherwise, nothing when hidden.
pub struct Progress {
    mode: Mode,
}

enum Mode {
    Hidden,
    Bar(ProgressBar),
    Lines(Mutex<Lines>),
}

struct Lines {
    total: usize,
    start: usize,
    position: usize,
    message: String,
    began: Instant,
    last_line: Option<Instant>,
}

impl Lines {
    /// `step 12/100  loss 2.345  lr 2.00e-4  812 tok/s  elapsed 0:41  left 5:02`
    fn line(&self) -> String {
        let elapsed = self.began.elapsed();
        let done = self.position.saturating_sub(self.start);
        let left = self.total.saturating_sub(self.position);
        let eta = if done > 0 { elapsed.mul_f64(left as f64 / done as f64) } else { Duration::ZERO };
        format!(
            "step {}/{}  {}  elapsed {}  left {}",
            self.position,
            self.total,
            self.message,
            clock(elapsed),
            clock(eta)
        )
    }
}

/// `m:ss`, or `h:mm:ss` past an hour.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", (s / 60) % 60, s % 60),
    }
}

/// Progress over `total` steps starting at `start`; hidden when `show` is false (tests), a bar when
/// stderr is a terminal, lines when it is not.
pub fn bar(total: usize, start: usize, show: bool) -> Progress {
    if !show {
        return Progress { mode: Mode::Hidden };
    }
    if !std::io::stderr().is_terminal() {
        return Progress::lines(total, start);
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}")
            .expect("the template is valid"),
    );
    bar.set_position(start as u64);
    Progress { mode: Mode::Bar(bar) }
}

impl Progress {
    /// The line-printing form, whatever stderr is.
    pub fn lines(total: usize, start: usize) -> Self {
        let lines =
            Lines { total, start, position: start, message: String::new(), began: Instant::now(), last_line: None };
        Progress { mode: Mode::Lines(Mutex::new(lines)) }
    }

    /// Steps done so far. In line mode the line for a step is printed by [`Self::set_message`],
    /// which the loop calls right after, so that the line carries that step's loss.
    pub(crate) fn set_position(&self, position: u64) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => bar.set_position(position),
            Mode::Lines(lines) => lines.lock().expect("not poisoned").position = position as usize,
        }
    }

    /// The facts of the latest step (loss, learning rate, tokens/s). In line mode, prints a line
    /// if none was printed for `LINE_EVERY`, and always for the first and the last step.
    pub(crate) fn set_message(&self, message: impl Into<String>) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => bar.set_message(message.into()),
            Mode::Lines(lines) => {
                let mut l = lines.lock().expect("not poisoned");
                l.message = message.into();
                let due = l.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) || l.position >= l.total;
                if due {
                    eprintln!("{}", l.line());
                    l.last_line = Some(Instant::now());
                }
            }
        }
    }

    /// A line that stays (a validation result), above the bar or in the log.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => bar.println(line.as_ref()),
            Mode::Lines(_) => eprintln!("{}", line.as_ref()),
        }
    }

    /// The run is over: the bar goes away (lines mode has nothing to clear).
    pub(crate) fn finish_and_clear(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }

    /// The line that would be printed now (line mode only): for tests.
    #[cfg(test)]
    fn current_line(&self) -> Option<String> {
        match &self.mode {
            Mode::Lines(lines) => Some(lines.lock().expect("not poisoned").line()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_step_the_loss_and_the_time_left() {
        let p = Progress::lines(100, 0);
        p.set_position(10);
        p.set_message("loss 2.345  lr 2.00e-4  812 tok/s");
        let line = p.current_line().unwrap();
        assert!(line.starts_with("step 10/100  loss 2.345  lr 2.00e-4  812 tok/s  elapsed 0:0"), "{line}");
        assert!(line.contains("left "), "{line}");
    }

    #[test]
    fn clocks_read_as_minutes_or_hours() {
        assert_eq!(clock(Duration::from_secs(41)), "0:41");
        assert_eq!(clock(Duration::from_secs(302)), "5:02");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
