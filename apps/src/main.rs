//! `taskbus`: the command line of the taskbus framework.

mod cmd;

use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Run work as tasks travelling on a message bus.
#[derive(Debug, Parser)]
#[command(name = "taskbus", version, about, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    global: cmd::Global,
    #[command(subcommand)]
    command: Command,
}

const LONG_ABOUT: &str = "\
Run work as tasks travelling on a message bus.

A task is one JSON object: {\"type\":\"hello\",\"info\":\"world\",\"id\":\"…\",\"created\":\"…\"}. Taskmasters send
tasks to a topic named after their type; workers do them and send the done task (with result, msg, started,
ended) to the `done` topic, where taskmasters such as retry and flow react to it.

Every subcommand takes --bus (default: a file bus in ./.taskbus, no broker needed) and --log-format.
send, tail and exec also read a TOML file given with --config; `taskbus config` prints one with every option.
Flags win over environment variables, which win over the file.";

const EXAMPLES: &str = "\
Examples:
  taskbus send --type hello --info world                send one task (prints its id)
  taskbus exec --type hello -- echo 'hello {info}'      run a command for every hello task
  taskbus tail done                                     see what got done
  taskbus tail done --json | jq .                       the same, as JSON
  taskbus --bus nats://127.0.0.1:4222 tail done -f      the same on NATS, following new tasks
  taskbus config > taskbus.toml                         a config file with every option

Environment:
  TASKBUS_BUS, TASKBUS_LOG_FORMAT, TASKBUS_CONFIG   like --bus, --log-format, --config
  TASKBUS_LOG                                       log filter, e.g. debug or taskbus_bus=trace

Exit codes: 0 done; 1 failed while working (broker, input data, command); 2 called wrongly (flags,
config file, bus URL).";

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish tasks from flags, a file or stdin.
    Send(cmd::send::Args),
    /// Print a topic's tasks as lines or JSON.
    Tail(cmd::tail::Args),
    /// Run a command per task: a worker in any language.
    Exec(cmd::exec::Args),
    /// Print a commented sample config file, or check one.
    Config(cmd::config::Args),
    /// Send tasks on cron schedules.
    Cron(cmd::cron::Args),
    /// Retry failed tasks by rules.
    Retry(cmd::retry::Args),
    /// Send tasks over a time range.
    Backload(cmd::backload::Args),
    /// Run workflows: start child tasks when their parents complete.
    Flow(cmd::flow::Args),
    /// Measure throughput, latency and memory against the raw broker clients.
    Bench(cmd::bench::Args),
}

impl Command {
    /// The `--config` file of the subcommands that read the shared config file.
    fn config_file(&self) -> Option<&Path> {
        match self {
            Command::Send(args) => args.config.as_deref(),
            Command::Tail(args) => args.config.as_deref(),
            Command::Exec(args) => args.config.as_deref(),
            _ => None,
        }
    }

    /// The default log filter: quiet for one-shot commands, `info` for services.
    fn default_log(&self) -> &'static str {
        match self {
            // bench draws a progress bar: the launcher's info lines would bury it.
            Command::Send(_) | Command::Tail(_) | Command::Config(_) | Command::Bench(_) => {
                cmd::logging::ONE_SHOT
            }
            _ => cmd::logging::SERVICE,
        }
    }
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return cmd::failure::report_clap(&e, &command_name()),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return cmd::failure::report_clap(&e, &command_name()),
    };
    let file = match cli
        .command
        .config_file()
        .map(cmd::ConfigFile::load)
        .transpose()
    {
        Ok(file) => file.unwrap_or_default(),
        Err(e) => return cmd::failure::report(&anyhow::Error::new(e)),
    };
    let global = cli.global.with_file(&matches, file);
    let default_log = cli.command.default_log();
    cmd::main(global, default_log, |global| async move {
        match cli.command {
            Command::Send(args) => cmd::send::run(args, &global).await,
            Command::Tail(args) => cmd::tail::run(args, &global).await,
            Command::Exec(args) => cmd::exec::run(args, &global).await,
            Command::Config(args) => cmd::config::run(args, &global).await,
            Command::Cron(args) => cmd::cron::run(args, &global).await,
            Command::Retry(args) => cmd::retry::run(args, &global).await,
            Command::Backload(args) => cmd::backload::run(args, &global).await,
            Command::Flow(args) => cmd::flow::run(args, &global).await,
            Command::Bench(args) => cmd::bench::run(args, &global).await,
        }
    })
}

/// `taskbus SUBCOMMAND` when the arguments name one, for "see `… --help`" in errors.
fn command_name() -> String {
    let cli = Cli::command();
    let sub = std::env::args()
        .skip(1)
        .find(|arg| cli.get_subcommands().any(|s| s.get_name() == arg.as_str()));
    match sub {
        Some(sub) => format!("taskbus {sub}"),
        None => "taskbus".to_owned(),
    }
}
