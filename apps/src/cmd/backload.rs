//! `taskbus backload`: tasks over a time range (see [`taskbus_taskmaster::backload`]).

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use taskbus_bus::Bus;
use taskbus_taskmaster::backload::{self, config::Request, Backload};
use taskbus_taskmaster::Tz;

use super::failure::usage;
use super::Global;

/// Options of `taskbus backload`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The tasks' type.
    #[arg(long = "type", value_name = "TYPE")]
    kind: String,
    /// The tasks' job.
    #[arg(long, default_value = "")]
    job: String,
    /// The tasks' info, a template ({yyyy}-{mm}-{dd}, {SLUG}, {meta:key} …).
    #[arg(long, default_value = "")]
    template: String,
    /// Where to send them [default: the type].
    #[arg(long)]
    topic: Option<String>,
    /// The first time: 2024-01-02, 2024-01-02T15, 2024-01-02T15:04:05, RFC 3339, now, today, yesterday.
    #[arg(long)]
    from: String,
    /// The last time, included [default: --from]; before --from, tasks go newest first.
    #[arg(long)]
    to: Option<String>,
    /// The step: hour, day, week or month.
    #[arg(long, default_value = "day")]
    by: String,
    /// Take every N-th step.
    #[arg(long, default_value_t = 1, value_name = "N")]
    every: u32,
    /// The time of day (HH or HH:MM) for --by day, week or month.
    #[arg(long, value_name = "HH:MM")]
    at: Option<String>,
    /// Only these hours (0-23, lists and ranges: 0-5,12).
    #[arg(long, value_name = "HOURS")]
    on_hours: Option<String>,
    /// Not these hours.
    #[arg(long, value_name = "HOURS")]
    off_hours: Option<String>,
    /// The time zone of the times and templates [default: UTC].
    #[arg(long, value_name = "ZONE")]
    timezone: Option<String>,
    /// A meta key and its values (key=a,b): one task per value; repeat for combinations.
    #[arg(long, value_name = "KEY=V1,V2")]
    meta: Vec<String>,
    /// A JSON-lines file of meta rows: one task per row per time.
    #[arg(long, value_name = "FILE")]
    meta_file: Option<PathBuf>,
    /// Print the tasks (JSON lines on stdout) instead of sending them.
    #[arg(long)]
    dry_run: bool,
    /// Publishes kept unconfirmed at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    in_flight: usize,
    /// Refuse to make more tasks than this (a guard against a range typed wrong).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    max_tasks: usize,
}

/// Runs `taskbus backload`.
pub(crate) async fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let plan = request(&args)
        .build(chrono::Utc::now())
        .map_err(|e| usage(e.to_string()))?;
    let per_time = plan.rows.len().max(1);
    let times = plan.times(args.max_tasks / per_time).map_err(|_| {
        usage(format!("--from/--to/--by make more than --max-tasks {} tasks; narrow the range or raise --max-tasks", args.max_tasks))
    })?;
    let tasks = plan
        .tasks(&times)
        .map_err(|e| usage(format!("--template: {e}")))?;
    let summary = describe(&plan, &times, tasks.len());
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for task in &tasks {
            writeln!(out, "{}", task.to_json())?;
        }
        out.flush()?;
        eprintln!("dry run: would send {summary}");
        return Ok(());
    }
    let bus = Bus::connect(&global.bus).await?;
    let bar = progress_bar(tasks.len() as u64);
    let started = Instant::now();
    let sent = backload::send(&bus, &plan.topic, &tasks, args.in_flight, |n| {
        if let Some(bar) = &bar {
            bar.set_position(n as u64);
        }
    })
    .await
    .with_context(|| {
        format!(
            "backload stopped; some of {} tasks may have been sent",
            tasks.len()
        )
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    bus.close().await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "sent {sent} of {summary} in {secs:.2}s ({:.0} tasks/s)",
        sent as f64 / secs.max(1e-6)
    );
    Ok(())
}

fn request(args: &Args) -> Request {
    Request {
        kind: args.kind.clone(),
        job: args.job.clone(),
        template: args.template.clone(),
        topic: args.topic.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        by: args.by.clone(),
        every: args.every,
        at: args.at.clone(),
        on_hours: args.on_hours.clone(),
        off_hours: args.off_hours.clone(),
        timezone: args.timezone.clone(),
        meta: args.meta.clone(),
        meta_file: args.meta_file.clone(),
    }
}

/// `31 tasks of type report to topic report: 2024-01-01T00:00:00Z … 2024-01-31T00:00:00Z by day`.
fn describe(plan: &Backload, times: &[chrono::DateTime<Tz>], count: usize) -> String {
    let fmt = |t: &chrono::DateTime<Tz>| t.to_rfc3339();
    let range = match (times.first(), times.last()) {
        (Some(a), Some(b)) => format!("{} … {}", fmt(a), fmt(b)),
        _ => "no times (check --on-hours/--off-hours)".to_owned(),
    };
    let order = if plan.reversed() {
        ", newest first"
    } else {
        ""
    };
    format!(
        "{count} tasks of type {} to topic {}: {range} by {}{order}",
        plan.kind, plan.topic, plan.by
    )
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks ({percent}%), eta {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}
