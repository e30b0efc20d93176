//! `taskbus exec` (not written yet).

use super::Global;

/// Options of `taskbus exec`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus exec`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus exec is not written yet")
}
