//! `taskbus cron`: send tasks on schedules (see [`taskbus_taskmaster::cron`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use taskbus_bus::{Bus, BusUrl};
use taskbus_taskmaster::clock::{Clock, SystemClock};
use taskbus_taskmaster::cron::ledger::DirLedger;
use taskbus_taskmaster::cron::{config, CronService, Rule};
use tokio_util::sync::CancellationToken;

use super::failure::usage;
use super::Global;

const EXAMPLES: &str = "\
A rules file (cron.toml):
  [[rule]]
  name = \"hourly-report\"
  cron = \"0 5 * * * *\"          # 5 fields, 6 with seconds first, @hourly, @every 30s
  timezone = \"Europe/Paris\"     # default UTC
  type = \"report\"
  template = \"s3://bucket/{SLUG}/data.json?day={yyyy}-{mm}-{dd}\"
  offset = \"-1h\"
  catch_up = \"latest\"           # none | latest | all, within catch_up_window (24h)

Examples:
  taskbus cron --config cron.toml --next 5     check the file and show the next ticks
  taskbus --bus file://./data cron --config cron.toml

Replicas sharing the bus (and the --state directory) send each tick once.";

/// Options of `taskbus cron`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub(crate) struct Args {
    /// The rules file (TOML, [[rule]] tables; see the taskmaster docs).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Check the file, print the next N fire times of each rule, and exit without sending.
    #[arg(long, value_name = "N")]
    next: Option<usize>,
    /// The directory where replicas claim ticks and the last sent tick is kept
    /// [default: DIR/.cron for file://DIR, else ./.taskbus-cron].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// How long another replica's claim of a tick is trusted before this one takes the tick over.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    lease: Duration,
    /// How late a tick may be sent and still count as on time (later ticks follow the catch-up policy).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    grace: Duration,
}

/// Runs `taskbus cron`.
pub(crate) async fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let rules = config::load(&args.config).map_err(|e| usage(e.to_string()))?;
    if let Some(n) = args.next {
        print!("{}", next_ticks(&rules, n, SystemClock.now()));
        return Ok(());
    }
    let state = match args.state {
        Some(dir) => dir,
        None => default_state_dir(&global.bus),
    };
    let ledger = DirLedger::new(&state, args.lease)
        .with_context(|| format!("cannot use the cron state directory {}", state.display()))?;
    tracing::info!(state = %state.display(), rules = rules.len(), bus = %global.bus, "cron starting");
    let bus = Bus::connect(&global.bus).await?;
    let service = CronService::new(bus.clone(), rules, Arc::new(ledger), Arc::new(SystemClock))
        .lease(args.lease)
        .grace(args.grace);
    let shutdown = shutdown_on_signals();
    service.run(shutdown).await?;
    bus.close().await?;
    Ok(())
}

/// The next `n` ticks of each rule after `now`, with the task each would send.
fn next_ticks(rules: &[Rule], n: usize, now: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::new();
    for rule in rules {
        let job = if rule.job.is_empty() {
            String::new()
        } else {
            format!(" job {}", rule.job)
        };
        let _ = writeln!(
            out,
            "rule {}: {} -> type {}{job} on topic {} (catch_up {} within {})",
            rule.name,
            rule.schedule,
            rule.kind,
            rule.topic,
            rule.catch_up,
            humantime::format_duration(rule.catch_up_window)
        );
        let mut t = now;
        for _ in 0..n {
            let Some(tick) = rule.schedule.next_after(t) else {
                break;
            };
            t = tick;
            let local = tick.with_timezone(&rule.schedule.timezone());
            let info = rule
                .task(tick)
                .map(|task| task.info)
                .unwrap_or_else(|e| format!("({e})"));
            let _ = writeln!(
                out,
                "  {}  ({})  info={info}",
                local.to_rfc3339(),
                tick.format("%Y-%m-%dT%H:%M:%SZ")
            );
        }
    }
    out
}

/// `DIR/.cron` for `file://DIR`, else `.taskbus-cron` in the working directory.
fn default_state_dir(bus: &str) -> PathBuf {
    match BusUrl::parse(bus) {
        Ok(url) if url.scheme() == "file" => {
            let dir = url.body().strip_prefix("//").unwrap_or(url.body());
            PathBuf::from(if dir.is_empty() { "." } else { dir }).join(".cron")
        }
        _ => PathBuf::from(".taskbus-cron"),
    }
}

/// A token cancelled on SIGINT or SIGTERM.
pub(crate) fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_follows_the_file_bus() {
        assert_eq!(
            default_state_dir("file://./data"),
            PathBuf::from("./data/.cron")
        );
        assert_eq!(
            default_state_dir("file:///var/lib/tb?lease=5s"),
            PathBuf::from("/var/lib/tb/.cron")
        );
        assert_eq!(
            default_state_dir("nats://127.0.0.1:4222"),
            PathBuf::from(".taskbus-cron")
        );
    }
}
