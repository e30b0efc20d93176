//! The subcommands, one file each, and what they share.
//!
//! Each subcommand file has `pub(crate) struct Args` (clap) and
//! `pub(crate) async fn run(args: Args, global: &Global) -> anyhow::Result<()>`.
//! [`main`] sets up logging and the runtime, runs the command, and turns an error into one line on
//! stderr and an exit code ([`failure`]).

pub(crate) mod backload;
pub(crate) mod bench;
pub(crate) mod config;
pub(crate) mod cron;
pub(crate) mod exec;
pub(crate) mod failure;
pub(crate) mod flow;
pub(crate) mod logging;
pub(crate) mod render;
pub(crate) mod retry;
pub(crate) mod send;
pub(crate) mod settings;
pub(crate) mod tail;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) use logging::LogFormat;
pub(crate) use settings::ConfigFile;

/// The bus used when neither `--bus`, `TASKBUS_BUS` nor a config file names one: a file bus in the
/// current directory, so the first commands need no broker.
pub(crate) const DEFAULT_BUS: &str = "file://.taskbus";

/// Options every subcommand takes.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct Global {
    /// The bus: file://DIR, stdio:, mem:, nats://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST,
    /// kafka://HOST:PORT (options as ?key=value).
    #[arg(
        long,
        global = true,
        env = "TASKBUS_BUS",
        default_value = DEFAULT_BUS,
        value_name = "URL"
    )]
    pub(crate) bus: String,
    /// How to write logs (to stderr): text for people, json for log collectors.
    #[arg(
        long,
        global = true,
        env = "TASKBUS_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    pub(crate) log_format: LogFormat,
    /// The config file loaded by `--config` for send, tail and exec (empty when there is none).
    #[arg(skip)]
    pub(crate) file: Arc<ConfigFile>,
}

impl Global {
    /// Fills `bus` and `log_format` from `file` where neither a flag nor the environment set them,
    /// and keeps the file for the subcommand.
    pub(crate) fn with_file(mut self, matches: &clap::ArgMatches, file: ConfigFile) -> Global {
        let defaulted = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(clap::parser::ValueSource::DefaultValue)
            )
        };
        if let (true, Some(bus)) = (defaulted("bus"), &file.bus) {
            self.bus.clone_from(bus);
        }
        if let (true, Some(format)) = (defaulted("log_format"), file.log_format) {
            self.log_format = format;
        }
        self.file = Arc::new(file);
        self
    }

    /// True when the bus is `stdio:`, whose stdout carries tasks, so commands print elsewhere.
    pub(crate) fn bus_is_stdio(&self) -> bool {
        self.bus.trim().to_ascii_lowercase().starts_with("stdio:")
    }
}

/// Sets up logging (`default_log`: [`logging::SERVICE`] or [`logging::ONE_SHOT`]) and a runtime,
/// runs the command, and maps an error to one line and an exit code (see [`failure::exit_code`]).
pub(crate) fn main<F, Fut>(global: Global, default_log: &str, run: F) -> ExitCode
where
    F: FnOnce(Global) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    logging::init(global.log_format, default_log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(global));
    // Do not wait for blocking reads of stdin that the command no longer needs.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure::report(&e),
    }
}
