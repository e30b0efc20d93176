//! How the command line fails: one line on stderr that says what is wrong and what to do, and an
//! exit code that tells a usage mistake (2) from a failure while working (1).

use std::fmt;
use std::process::ExitCode;

use taskbus_bus::BusError;

/// Exit code for a mistake in how the command was called: flags, config file, bus URL.
pub(crate) const USAGE: u8 = 2;
/// Exit code for a failure while working: broker unreachable, publish failed, bad input data.
pub(crate) const FAILURE: u8 = 1;

/// A mistake in how the command was called (flags, config file, names): exit code 2.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error as an `anyhow::Error`.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// The exit code for `error`: [`USAGE`] when the command was called wrongly, else [`FAILURE`].
pub(crate) fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<Usage>() {
            return USAGE;
        }
        if let Some(bus) = cause.downcast_ref::<BusError>() {
            return match bus {
                BusError::Url { .. } | BusError::NotBuilt { .. } | BusError::InvalidName { .. } => {
                    USAGE
                }
                _ => FAILURE,
            };
        }
    }
    FAILURE
}

/// Prints `error` as one line, `error: what: why`, and returns its exit code.
pub(crate) fn report(error: &anyhow::Error) -> ExitCode {
    let line = format!("{error:#}").replace('\n', " ");
    eprintln!("error: {line}");
    ExitCode::from(exit_code(error))
}

/// Prints a command-line parse error as one line (help and version print as usual) and returns the
/// exit code.
pub(crate) fn report_clap(error: &clap::Error, command: &str) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(if error.use_stderr() { USAGE } else { 0 });
    }
    eprintln!("error: {}", clap_one_line(error, command));
    ExitCode::from(USAGE)
}

/// clap's message, tip included, on one line, with where to read more.
fn clap_one_line(error: &clap::Error, command: &str) -> String {
    let text = error.render().to_string();
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let what = parts.join("; ");
    format!("{what} (see `{command} --help`)")
}
