//! `taskbus exec`: a generic worker that runs a command per task (not written yet: it waits for the
//! Launcher).

use std::path::PathBuf;

use super::settings::Dur;
use super::Global;

/// Options of `taskbus exec`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A TOML config file (see `taskbus config`).
    #[arg(long, env = "TASKBUS_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

/// Options of `exec` that a config file's `[exec]` table can also set.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Options {
    /// The type of task to run.
    #[arg(long = "type", value_name = "TYPE")]
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    /// Cancel a task after this long.
    #[arg(long, value_name = "DURATION")]
    pub(crate) timeout: Option<Dur>,
}

/// Runs `taskbus exec`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus exec is not written yet")
}
