//! The subcommands, one file each, and what they share.
//!
//! Each subcommand file has `pub(crate) struct Args` (clap) and
//! `pub(crate) async fn run(args: Args, global: &Global) -> anyhow::Result<()>`.

pub(crate) mod backload;
pub(crate) mod bench;
pub(crate) mod config;
pub(crate) mod cron;
pub(crate) mod exec;
pub(crate) mod flow;
pub(crate) mod retry;
pub(crate) mod send;
pub(crate) mod tail;

use std::future::Future;
use std::process::ExitCode;

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// The bus: file://DIR, stdio:, mem:, nats://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST, kafka://HOST:PORT
    #[arg(long, global = true, env = "TASKBUS_BUS", default_value = "file://.taskbus")]
    pub(crate) bus: String,
    /// Log format: text or json.
    #[arg(long, global = true, env = "TASKBUS_LOG_FORMAT", default_value = "text")]
    pub(crate) log_format: String,
}

/// Sets up logging and a runtime, runs the command, and maps an error to one line and exit code 1.
pub(crate) fn main<F, Fut>(global: Global, run: F) -> ExitCode
where
    F: FnOnce(Global) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(global)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
