//! Prometheus text exposition of a [`StatsSnapshot`].

use std::fmt::Write;

use taskbus_bus::TaskResult;

use crate::StatsSnapshot;

/// The snapshot in the Prometheus text format (version 0.0.4).
pub fn render(s: &StatsSnapshot) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP taskbus_worker_{name} {help}");
        let _ = writeln!(out, "# TYPE taskbus_worker_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "taskbus_worker_{name}{labels} {value}");
        }
    };
    #[allow(clippy::cast_precision_loss)]
    let n = |v: u64| v as f64;
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the launcher started.",
        &[("", s.uptime_secs)],
    );
    metric(
        "tasks_consumed_total",
        "counter",
        "Tasks received from the bus.",
        &[("", n(s.consumed))],
    );
    metric(
        "tasks_running",
        "gauge",
        "Tasks whose worker is running.",
        &[("", n(s.running))],
    );
    let labels: Vec<String> = TaskResult::ALL
        .iter()
        .map(|r| format!("{{result=\"{r}\"}}"))
        .collect();
    let done: Vec<(&str, f64)> = TaskResult::ALL
        .iter()
        .zip(&labels)
        .map(|(r, l)| (l.as_str(), n(s.done.get(*r))))
        .collect();
    metric(
        "tasks_done_total",
        "counter",
        "Done tasks published, by result.",
        &done,
    );
    for (name, help, v) in [
        (
            "tasks_rejected_total",
            "Tasks of another type answered with a rejection.",
            s.rejected,
        ),
        (
            "tasks_ignored_total",
            "Tasks of another type left for other consumers.",
            s.ignored,
        ),
        (
            "tasks_expired_total",
            "Tasks not run because their deadline had passed.",
            s.expired,
        ),
        (
            "tasks_timed_out_total",
            "Tasks stopped by their timeout.",
            s.timed_out,
        ),
        (
            "tasks_panicked_total",
            "Tasks whose worker panicked.",
            s.panicked,
        ),
        (
            "tasks_interrupted_total",
            "Tasks cut off by a shutdown and failed.",
            s.interrupted,
        ),
        (
            "tasks_redelivered_total",
            "Tasks cut off by a shutdown and handed back.",
            s.redelivered,
        ),
        (
            "publish_failures_total",
            "Done tasks that could not be published.",
            s.publish_failures,
        ),
        (
            "ack_failures_total",
            "Inputs whose ack failed after their done task was published.",
            s.ack_failures,
        ),
    ] {
        metric(name, "counter", help, &[("", n(v))]);
    }
    let t = &s.task_time;
    metric(
        "task_duration_seconds",
        "summary",
        "How long workers took, started to ended.",
        &[
            ("{quantile=\"0.5\"}", t.p50_ms / 1000.0),
            ("{quantile=\"0.99\"}", t.p99_ms / 1000.0),
            ("_sum", t.mean_ms * n(t.count) / 1000.0),
            ("_count", n(t.count)),
        ],
    );
    out
}
