//! `taskbus cron` (not written yet).

use super::Global;

/// Options of `taskbus cron`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus cron`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus cron is not written yet")
}
