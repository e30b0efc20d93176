//! The progress of a run on stderr: a bar per step when stderr is a terminal, and one line per
//! finished step either way.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

/// Counts the steps of a run and draws their bars.
#[derive(Debug)]
pub(crate) struct Progress {
    tty: bool,
    step: AtomicUsize,
    steps: usize,
}

impl Progress {
    /// Progress over `steps` steps.
    pub(crate) fn new(steps: usize) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            step: AtomicUsize::new(0),
            steps,
        }
    }

    /// Starts the next step, `what`, of `len` units (tasks); the bar is hidden off a terminal.
    pub(crate) fn start(&self, what: &str, len: u64) -> ProgressBar {
        let step = self.step.fetch_add(1, Ordering::Relaxed) + 1;
        let bar = if self.tty {
            ProgressBar::new(len)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} {wide_msg} {bar:30} {pos}/{len} ({per_sec}) {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(format!("[{step}/{}]", self.steps));
        bar.set_message(what.to_owned());
        bar
    }

    /// Ends a step's bar and prints `line` in its place.
    pub(crate) fn finish(&self, bar: &ProgressBar, line: &str) {
        let prefix = bar.prefix();
        bar.finish_and_clear();
        if prefix.is_empty() {
            eprintln!("{line}");
        } else {
            eprintln!("{prefix} {line}");
        }
    }

    /// Prints a line that belongs to no step.
    pub(crate) fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}
