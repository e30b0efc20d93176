//! Compact human lines for tasks, coloured when asked:
//!
//! ```text
//! 2024-01-02T15:04:07Z  hello           complete  0.52s  3f2a9c1e  world  said hello
//! 2024-01-02T15:04:05Z  resize:thumb    -                9b1d0e77  s3://b/a.png
//! ```
//!
//! The time is `ended` for a done task, else `created`; the id is cut to 8 characters.

use std::fmt::Write as _;
use std::io::IsTerminal;

use taskbus_bus::{DeadLetter, Task, TaskResult};

/// When to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ColorChoice {
    /// When stdout is a terminal and `NO_COLOR` is not set.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout.
    pub(crate) fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        }
    }
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

fn result_colour(result: Option<TaskResult>) -> &'static str {
    match result {
        Some(TaskResult::Complete) => "\x1b[32m",
        Some(TaskResult::Error) => "\x1b[31m",
        Some(TaskResult::Warn) => "\x1b[33m",
        Some(TaskResult::Alert) => "\x1b[35m",
        _ => DIM,
    }
}

/// Paints `text` with `colour` when `on`.
fn paint(out: &mut String, on: bool, colour: &str, text: &str) {
    if on {
        let _ = write!(out, "{colour}{text}{RESET}");
    } else {
        out.push_str(text);
    }
}

/// One line for `task` (no newline).
pub(crate) fn task_line(task: &Task, colour: bool) -> String {
    let mut out = String::new();
    let time = task.ended.or(task.created);
    let time = time.map_or_else(|| "-".repeat(20), |t| taskbus_bus::task::time::format(&t));
    paint(&mut out, colour, DIM, &time);
    out.push_str("  ");
    paint(&mut out, colour, BOLD, &format!("{:<14}", task.kind_job()));
    out.push_str("  ");
    let result = task.result.map_or("-", TaskResult::as_str);
    paint(
        &mut out,
        colour,
        result_colour(task.result),
        &format!("{result:<8}"),
    );
    let took = task.duration().map_or_else(String::new, |d| {
        format!("{:.2}s", d.num_milliseconds() as f64 / 1000.0)
    });
    let _ = write!(out, "  {took:>6}  ");
    let id: String = task.id.chars().take(8).collect();
    paint(&mut out, colour, DIM, &format!("{id:<8}"));
    let _ = write!(out, "  {}", one_line(&task.info));
    if !task.msg.is_empty() {
        let _ = write!(out, "  {}", one_line(&task.msg));
    }
    out
}

/// One line for an entry of the dead-letter topic.
pub(crate) fn dead_letter_line(letter: &DeadLetter, colour: bool) -> String {
    let mut out = String::new();
    paint(
        &mut out,
        colour,
        DIM,
        &taskbus_bus::task::time::format(&letter.at),
    );
    out.push_str("  ");
    paint(
        &mut out,
        colour,
        result_colour(Some(TaskResult::Alert)),
        &format!("dead letter from {}/{}", letter.topic, letter.group),
    );
    let _ = write!(
        out,
        "  {} (delivered {}x)  {}",
        one_line(&letter.reason),
        letter.delivery_count,
        one_line(&letter.payload)
    );
    out
}

/// `text` with line breaks shown as `⏎`, so one task is one line.
fn one_line(text: &str) -> String {
    text.replace("\r\n", "⏎").replace(['\n', '\r'], "⏎")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn done_task_line_has_result_duration_short_id_info_and_msg() {
        let mut task = Task::with_id("hello", "world", "3f2a9c1e-0000-0000-0000-000000000000");
        task.end(TaskResult::Complete, "said\nhello");
        let line = task_line(&task, false);
        assert!(line.contains("hello "), "{line}");
        assert!(line.contains("complete"), "{line}");
        assert!(line.contains("3f2a9c1e  world  said⏎hello"), "{line}");
        assert!(!line.contains('\x1b'), "{line}");
        assert!(task_line(&task, true).contains("\x1b[32mcomplete"));
    }

    #[test]
    fn todo_task_line_shows_a_dash_for_the_result() {
        let task = Task::new("resize", "s3://b/a.png").job("thumb");
        let line = task_line(&task, false);
        assert!(line.contains("resize:thumb"), "{line}");
        assert!(line.contains("  -  "), "{line}");
    }
}
