//! Logs go to stderr, as text for people or as JSON lines for log collectors. The level comes from
//! `TASKBUS_LOG` (or `RUST_LOG`), in `tracing-subscriber`'s filter syntax. By default, services
//! (exec, cron, retry …) log taskbus's own `info` and broker clients' warnings; one-shot commands
//! (send, tail, config) only warnings, so their stderr stays quiet.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Compact human lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The default filter of a long-running command.
pub(crate) const SERVICE: &str =
    "warn,taskbus=info,taskbus_bus=info,taskbus_worker=info,taskbus_taskmaster=info";
/// The default filter of a one-shot command.
pub(crate) const ONE_SHOT: &str = "warn";

/// Installs the global subscriber with `default` as the filter unless the environment sets one; a
/// second call does nothing.
pub(crate) fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_env("TASKBUS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .compact()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
