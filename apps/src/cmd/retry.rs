//! `taskbus retry`: retry failed tasks by rules (see [`taskbus_taskmaster::retry`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use taskbus_bus::Bus;
use taskbus_taskmaster::clock::SystemClock;
use taskbus_taskmaster::retry::{config, RetryOptions, RetryService};

use super::failure::usage;
use super::Global;

const EXAMPLES: &str = "\
A rules file (retry.toml):
  done_topic = \"done\"
  failed_topic = \"failed\"
  [[rule]]
  type = \"flaky\"                 # or \"*\"; add job = \"...\" for one job only
  retries = 3
  delay = \"30s\"
  backoff = \"exponential\"        # fixed | linear | exponential
  jitter = \"5s\"
  max_delay = \"10m\"

Workers can set meta no_retry=true or retry_after=2m on a done task; warn and alert never retry.

Example:
  taskbus --bus file://./data retry --config retry.toml";

/// Options of `taskbus retry`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub(crate) struct Args {
    /// The rules file (TOML: done_topic, group, failed_topic and [[rule]] tables).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Check the file, print the rules, and exit.
    #[arg(long)]
    check: bool,
    /// Read done tasks from this topic instead of the file's done_topic.
    #[arg(long, value_name = "TOPIC")]
    done_topic: Option<String>,
    /// Use this consumer group instead of the file's group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Send tasks that will not be retried to this topic instead of the file's failed_topic.
    #[arg(long, value_name = "TOPIC")]
    failed_topic: Option<String>,
    /// How often the lease of a done message held for a pending retry is renewed (keep it below the bus's lease).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    keepalive: Duration,
    /// How many done messages may be held for pending retries at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_pending: usize,
    /// Retries due later than this are nacked with the delay instead of held, where the bus can.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    max_hold: Duration,
}

/// Runs `taskbus retry`.
pub(crate) async fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let mut config = config::load(&args.config).map_err(|e| usage(e.to_string()))?;
    for (flag, value, field) in [
        ("--done-topic", args.done_topic, &mut config.done_topic),
        ("--group", args.group, &mut config.group),
        (
            "--failed-topic",
            args.failed_topic,
            &mut config.rules.failed_topic,
        ),
    ] {
        if let Some(v) = value {
            taskbus_bus::check_name("topic", &v).map_err(|e| usage(format!("{flag}: {e}")))?;
            *field = v;
        }
    }
    if args.check {
        println!(
            "done topic {}, group {}, failed topic {}",
            config.done_topic, config.group, config.rules.failed_topic
        );
        for rule in &config.rules.rules {
            let job = rule
                .job
                .as_deref()
                .map(|j| format!(" job {j}"))
                .unwrap_or_default();
            println!("type {}{job}: {:?}", rule.kind, rule.policy);
        }
        return Ok(());
    }
    let bus = Bus::connect(&global.bus).await?;
    let options = RetryOptions {
        keepalive: args.keepalive,
        max_pending: args.max_pending.max(1),
        max_hold: args.max_hold,
    };
    let service = RetryService::new(bus.clone(), config, Arc::new(SystemClock)).options(options);
    service.run(super::cron::shutdown_on_signals()).await?;
    bus.close().await?;
    Ok(())
}
