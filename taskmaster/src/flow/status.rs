//! How a run stands, for `taskbus flow status`: each phase as to do, in process, completed, failed
//! or skipped, with its times and why.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::rules::{PhaseStatus, Run, RunOutcome};
use super::workflow::rfc3339;

/// One phase of a run, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseRow {
    /// The phase.
    pub phase: String,
    /// `type:job`.
    pub task: String,
    /// to do, in process, completed, failed, skipped.
    pub status: &'static str,
    /// The attempt of its latest task.
    pub attempt: u32,
    /// When its latest task was sent.
    pub sent: Option<DateTime<Utc>>,
    /// When a worker started it.
    pub started: Option<DateTime<Utc>>,
    /// When a worker ended it.
    pub ended: Option<DateTime<Utc>>,
    /// Why, or what it waits for.
    pub note: String,
}

/// The phases of `run` in workflow order (parents first).
pub fn rows(run: &Run) -> Vec<PhaseRow> {
    let w = &run.workflow;
    // Why a phase that did not start cannot start: a parent failed (or is blocked by one).
    let mut blocked: Vec<Option<String>> = vec![None; w.phases().len()];
    let mut out = Vec::with_capacity(w.phases().len());
    for &i in w.order() {
        let phase = w.phase(i);
        let p = &run.phases[i];
        if p.status == PhaseStatus::Todo {
            blocked[i] = phase.parents.iter().find_map(|q| {
                if run.phases[*q].status == PhaseStatus::Failed {
                    Some(w.phase(*q).name.clone())
                } else {
                    blocked[*q].clone()
                }
            });
        }
        let note = match p.status {
            PhaseStatus::Todo => match &blocked[i] {
                Some(failed) => format!("will not start: {failed} failed"),
                None => {
                    let waiting: Vec<&str> = phase
                        .parents
                        .iter()
                        .filter(|q| run.phases[**q].status != PhaseStatus::Completed)
                        .map(|q| w.phase(*q).name.as_str())
                        .collect();
                    if waiting.is_empty() {
                        String::new()
                    } else {
                        format!("waits for {}", waiting.join(", "))
                    }
                }
            },
            PhaseStatus::Queued => match p.due {
                Some(due) => format!("retry {} due {}", p.attempt, rfc3339(due)),
                None => "being sent".to_owned(),
            },
            PhaseStatus::InProcess if p.result.is_some() => {
                format!(
                    "last try {}: {}",
                    p.result.map_or("", |r| r.as_str()),
                    p.msg
                )
            }
            PhaseStatus::InProcess => String::new(),
            PhaseStatus::Completed => p.msg.clone(),
            PhaseStatus::Failed | PhaseStatus::Skipped => p.reason.clone().unwrap_or_default(),
        };
        out.push(PhaseRow {
            phase: phase.name.clone(),
            task: phase.task_name(),
            status: p.status.label(),
            attempt: p.attempt,
            sent: p.sent,
            started: p.started,
            ended: p.ended,
            note,
        });
    }
    out
}

/// A run as a table.
pub fn render(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "workflow  {}", run.key.workflow);
    let _ = writeln!(out, "run       {}", run.key.run);
    let _ = writeln!(out, "scheduled {}", rfc3339(run.scheduled));
    let _ = writeln!(out, "started   {} ({})", short(run.started), run.via);
    let _ = writeln!(out, "updated   {}", short(run.updated));
    let _ = writeln!(out, "state     {}", run.outcome());
    out.push('\n');
    let t = |x: Option<DateTime<Utc>>| x.map_or_else(|| "-".to_owned(), short);
    let mut table = vec![[
        "PHASE".to_owned(),
        "TASK".to_owned(),
        "STATUS".to_owned(),
        "TRY".to_owned(),
        "SENT".to_owned(),
        "STARTED".to_owned(),
        "ENDED".to_owned(),
        "NOTE".to_owned(),
    ]];
    for r in rows(run) {
        table.push([
            r.phase,
            r.task,
            r.status.to_owned(),
            r.attempt.to_string(),
            t(r.sent),
            t(r.started),
            t(r.ended),
            r.note,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 7 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A time to the millisecond.
fn short(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A run as JSON: the run's fields and one object per phase.
pub fn to_json(run: &Run) -> serde_json::Value {
    let t = |x: Option<DateTime<Utc>>| x.map(rfc3339);
    let phases: Vec<serde_json::Value> = rows(run)
        .into_iter()
        .map(|r| {
            json!({"phase": r.phase, "task": r.task, "status": r.status, "attempt": r.attempt,
                "sent": t(r.sent), "started": t(r.started), "ended": t(r.ended), "note": r.note})
        })
        .collect();
    let outcome = run.outcome();
    json!({
        "workflow": run.key.workflow,
        "run": run.key.run,
        "scheduled": rfc3339(run.scheduled),
        "started": rfc3339(run.started),
        "updated": rfc3339(run.updated),
        "via": run.via,
        "state": match &outcome {
            RunOutcome::Running => "running",
            RunOutcome::Completed => "completed",
            RunOutcome::Failed { .. } => "failed",
            RunOutcome::Incomplete { .. } => "incomplete",
        },
        "reason": match outcome {
            RunOutcome::Failed { .. } | RunOutcome::Incomplete { .. } => Some(outcome.to_string()),
            _ => None,
        },
        "phases": phases,
    })
}

/// One line per run: state, scheduled time, counts of phases by status.
pub fn summary_line(run: &Run) -> String {
    let mut counts = [0usize; 5];
    for p in &run.phases {
        let slot = match p.status {
            PhaseStatus::Completed => 0,
            PhaseStatus::Queued | PhaseStatus::InProcess => 1,
            PhaseStatus::Todo => 2,
            PhaseStatus::Failed => 3,
            PhaseStatus::Skipped => 4,
        };
        counts[slot] += 1;
    }
    let state = match run.outcome() {
        RunOutcome::Running => "running",
        RunOutcome::Completed => "completed",
        RunOutcome::Failed { .. } => "failed",
        RunOutcome::Incomplete { .. } => "incomplete",
    };
    format!(
        "{}  {:<10}  {}  {}  completed {}, in process {}, to do {}, failed {}, skipped {}",
        run.key.run,
        state,
        rfc3339(run.scheduled),
        run.key.workflow,
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4]
    )
}
