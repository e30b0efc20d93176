//! `taskbus tail` (not written yet).

use super::Global;

/// Options of `taskbus tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus tail`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus tail is not written yet")
}
