//! `taskbus send` (not written yet).

use super::Global;

/// Options of `taskbus send`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus send`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus send is not written yet")
}
