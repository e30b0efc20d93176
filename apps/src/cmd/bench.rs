//! `taskbus bench` (not written yet).

use super::Global;

/// Options of `taskbus bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus bench`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus bench is not written yet")
}
