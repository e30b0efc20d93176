//! `taskbus`: the command line of the taskbus framework.

mod cmd;

use clap::{Parser, Subcommand};

/// Run work as tasks travelling on a message bus.
#[derive(Debug, Parser)]
#[command(name = "taskbus", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: cmd::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish tasks.
    Send(cmd::send::Args),
    /// Read a topic.
    Tail(cmd::tail::Args),
    /// Run a command per task: a generic worker.
    Exec(cmd::exec::Args),
    /// Print a commented sample configuration.
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::main(cli.global, |global| async move {
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
