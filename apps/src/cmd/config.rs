//! `taskbus config` (not written yet).

use super::Global;

/// Options of `taskbus config`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

/// Runs `taskbus config`.
pub(crate) async fn run(_args: Args, _global: &Global) -> anyhow::Result<()> {
    anyhow::bail!("taskbus config is not written yet")
}
