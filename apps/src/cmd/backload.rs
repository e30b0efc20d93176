//! `taskbus backload` (not written yet).

use super::Global;

/// Options of `taskbus backload`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus backload`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus backload is not written yet")
}
