//! `taskbus retry` (not written yet).

use super::Global;

/// Options of `taskbus retry`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus retry`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus retry is not written yet")
}
