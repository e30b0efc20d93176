//! `taskbus config`: print a commented sample config file with every option, or check a file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::{ConfigFile, Global};

/// Options of `taskbus config`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  taskbus config > taskbus.toml                 write the sample, then edit it
  taskbus config --check taskbus.toml           check a file: unknown keys and bad values are errors
  taskbus exec --config taskbus.toml            use it (send and tail take --config too)")]
pub(crate) struct Args {
    /// Check this config file instead of printing the sample: prints `ok` or the first problem.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

/// Runs `taskbus config`.
pub(crate) async fn run(args: Args, _global: &Global) -> anyhow::Result<()> {
    match args.check {
        Some(path) => {
            ConfigFile::load(&path)?;
            println!("ok: {} is a valid taskbus config file", path.display());
        }
        None => std::io::stdout()
            .write_all(SAMPLE.as_bytes())
            .context("cannot write the sample to stdout")?,
    }
    Ok(())
}

/// The sample: every option, commented out, with its flag and environment variable.
pub(crate) const SAMPLE: &str = r#"# taskbus config file: give it to send, tail or exec with --config FILE (or TASKBUS_CONFIG).
# Every option is shown commented out with an example or its default. A flag or environment variable
# wins over this file; a key taskbus does not know is an error, so typos never pass silently.
# Durations are written like "250ms", "30s", "5m", "1h30m".

# The bus URL (--bus, TASKBUS_BUS): file://DIR, stdio:, mem:, nats://HOST:PORT,
# amqp://USER:PASS@HOST:PORT/VHOST, kafka://HOST:PORT, with options as ?key=value.
# bus = "file://.taskbus"

# How logs are written to stderr (--log-format, TASKBUS_LOG_FORMAT): "text" or "json".
# log_format = "text"

[send]
# The topic to send to (--topic). Default: each task's type.
# topic = "hello"
# How many publishes to keep unconfirmed at once (--in-flight).
# in_flight = 64

[tail]
# Read as a member of this consumer group, acknowledging what is printed (--group).
# Default: a group of tail's own, which sees everything and takes nothing from workers.
# group = "workers"
# Colour: "auto", "always" or "never" (--color).
# color = "auto"
# Without --follow, on buses that cannot tell where a topic ends: stop after this long idle (--idle).
# idle = "2s"

[exec]
# Also environment variables TASKBUS_EXEC_<NAME>, such as TASKBUS_EXEC_MAX_IN_PROGRESS=4.
# The type of task to run (--type); tasks of other types on the topic are rejected or ignored.
# type = "resize"
# The command, with placeholders {type} {job} {info} {id} {created} {meta} {meta:KEY} {attempt}
# (on the command line: after --). Environment TASK_TYPE, TASK_INFO … and the task JSON on stdin.
# command = ["./resize.sh", "{info}"]
# The topic to read (--topic). Default: the type.
# topic = "resize"
# The consumer group; workers of one group share the topic's tasks (--group).
# group = "workers"
# Where done tasks go (--done-topic).
# done_topic = "done"
# How many commands run at once (--max-in-progress).
# max_in_progress = 1
# Run exactly this many tasks, then exit (--lifetime-workers). Default: no limit.
# lifetime_workers = 100
# Stop a command after this long; a task's `timeout` meta key wins (--timeout). Default: none.
# timeout = "5m"
# Between SIGTERM and SIGKILL to the command's process group when it must stop (--kill-grace).
# kill_grace = "2s"
# At shutdown, how long running commands may take to finish (--worker-kill-time).
# worker_kill_time = "10s"
# Commands still running after that: "auto" (redeliver, or fail on stdio:/mem:), "redeliver" or
# "fail" (--on-shutdown).
# on_shutdown = "auto"
# Tasks of another type: "reject" (an error done task) or "ignore" (left for others) (--other-types).
# other_types = "reject"
# The nack delay of an ignored task (--ignore-delay).
# ignore_delay = "1s"
# How often a running task's lease is extended; "0s" never (--heartbeat).
# heartbeat = "10s"
# The nack delay of a task whose done task could not be published (--publish-retry-delay).
# publish_retry_delay = "1s"
# Exit when the topic is drained instead of waiting for more (--finite).
# finite = false
# Serve /healthz, /stats and /metrics here (--http). Default: off.
# http = "127.0.0.1:9090"
# The working directory of the commands (--workdir). Default: the current one.
# workdir = "/srv/jobs"
# Bytes of the end of stderr (or stdout) that go into the done task's msg (--msg-bytes).
# msg_bytes = 2000
"#;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cmd::{exec, send, tail};

    /// The sample with every `# key = value` line uncommented.
    fn uncommented() -> String {
        SAMPLE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_sample_parses_with_every_option_set() {
        ConfigFile::parse(SAMPLE).unwrap();
        let file = ConfigFile::parse(&uncommented()).unwrap();
        assert_eq!(file.bus.as_deref(), Some("file://.taskbus"));
        assert_eq!(file.send.in_flight, Some(64));
        assert_eq!(file.tail.group.as_deref(), Some("workers"));
        assert_eq!(file.exec.kind.as_deref(), Some("resize"));
    }

    #[test]
    fn the_sample_shows_every_option_of_every_section() {
        use clap::Args as _;
        let sections = [
            (
                "send",
                send::Options::augment_args(clap::Command::new("send")),
            ),
            (
                "tail",
                tail::Options::augment_args(clap::Command::new("tail")),
            ),
            (
                "exec",
                exec::Options::augment_args(clap::Command::new("exec")),
            ),
        ];
        let text = uncommented();
        for (section, command) in sections {
            let table = text
                .split(&format!("[{section}]\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n[").next())
                .unwrap_or_else(|| panic!("no [{section}] in the sample"));
            for arg in command.get_arguments() {
                let key = arg.get_long().unwrap().replace('-', "_");
                assert!(
                    table.lines().any(|l| l.starts_with(&format!("{key} = "))),
                    "option {key} of [{section}] is missing from the sample"
                );
            }
        }
    }
}
