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
# The type of task to run (--type, TASKBUS_EXEC_TYPE).
# type = "resize"
# Cancel a task after this long (--timeout, TASKBUS_EXEC_TIMEOUT).
# timeout = "5m"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{exec, send, tail};

    /// The sample with every `# key = value` line uncommented.
    fn uncommented() -> String {
        SAMPLE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| !k.contains(' ')) => rest,
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
            ("send", send::Options::augment_args(clap::Command::new("send"))),
            ("tail", tail::Options::augment_args(clap::Command::new("tail"))),
            ("exec", exec::Options::augment_args(clap::Command::new("exec"))),
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
