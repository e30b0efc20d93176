//! `taskbus flow` (not written yet).

use super::Global;

/// Options of `taskbus flow`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus flow`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus flow is not written yet")
}
