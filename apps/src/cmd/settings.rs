//! The optional TOML config file of `send`, `tail` and `exec` (`--config FILE`).
//!
//! Top-level keys are the global options (`bus`, `log_format`); a table per subcommand (`[send]`,
//! `[tail]`, `[exec]`) holds that subcommand's options, named like its long flags with `_` for `-`.
//! A flag or environment variable wins over the file, which wins over the built-in default. A key this
//! version does not know is an error that names it and its line: a typo never passes silently.
//! `taskbus config` prints a sample with every option.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::failure::{usage, Usage};
use super::{exec, send, tail, LogFormat};

/// A loaded config file; every part is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// `bus`: the bus URL.
    pub(crate) bus: Option<String>,
    /// `log_format`: `text` or `json`.
    pub(crate) log_format: Option<LogFormat>,
    /// `[send]`.
    #[serde(default)]
    pub(crate) send: send::Options,
    /// `[tail]`.
    #[serde(default)]
    pub(crate) tail: tail::Options,
    /// `[exec]`.
    #[serde(default)]
    pub(crate) exec: exec::Options,
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub(crate) fn load(path: &Path) -> Result<ConfigFile, Usage> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Usage(format!(
                "cannot read config file {}: {e}; check the path given to --config \
                 (`taskbus config > taskbus.toml` writes a sample)",
                path.display()
            ))
        })?;
        Self::parse(&text).map_err(|e| Usage(format!("config file {}: {e}", path.display())))
    }

    /// Parses config text; the error names the line and the key.
    pub(crate) fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().replace('\n', " ");
            let hint = "(`taskbus config` prints every option)";
            match line {
                Some(line) => format!("line {line}: {message} {hint}"),
                None => format!("{message} {hint}"),
            }
        })
    }
}

/// A duration written like `30s`, `5m`, `1h30m` or `250ms`, in flags and in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("{s:?} is not a duration ({e}); write it like 30s, 5m or 250ms"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `KEY=VALUE` pair from a flag such as `--meta day=2024-01-02` or `--env K=V`.
pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE; write it like day=2024-01-02"
        )),
    }
}

/// Reads the value of each listed field from `file` where `flags` left it unset.
macro_rules! fill_from_file {
    ($flags:expr, $file:expr; $($field:ident),+ $(,)?) => {
        $( if $flags.$field.is_none() { $flags.$field = $file.$field.clone(); } )+
    };
}
pub(crate) use fill_from_file;

/// An error when a required option is missing from flags, environment and file alike.
pub(crate) fn missing(what: &str, flag: &str, section: &str, key: &str) -> anyhow::Error {
    usage(format!(
        "{what} is missing: give {flag}, or set {key} under [{section}] in the --config file"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = ConfigFile::parse("bus = \"mem:\"\n\n[exec]\nmax_inprogress = 3\n").unwrap_err();
        assert!(err.contains("max_inprogress"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        let err = ConfigFile::parse("buss = \"mem:\"\n").unwrap_err();
        assert!(err.contains("buss"), "{err}");
    }

    #[test]
    fn durations_read_from_flags_and_files() {
        assert_eq!("1m30s".parse::<Dur>().unwrap().0, Duration::from_secs(90));
        assert!("soon".parse::<Dur>().unwrap_err().contains("30s"));
        let file = ConfigFile::parse("[exec]\ntimeout = \"5m\"\n").unwrap();
        assert_eq!(file.exec.timeout, Some(Dur(Duration::from_secs(300))));
        assert!(ConfigFile::parse("[exec]\ntimeout = \"later\"\n").is_err());
    }

    #[test]
    fn key_values() {
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(key_value("novalue").is_err());
        assert!(key_value("=x").is_err());
    }
}
