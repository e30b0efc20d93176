//! Errors of the taskmaster crate. Each names the input that was wrong and says what to write instead.

use std::fmt;
use std::path::PathBuf;

use taskbus_bus::BusError;

/// A configuration file, or a command-line flag, that cannot be used.
///
/// Displayed as `FILE:LINE:COLUMN: KEY: MESSAGE`, leaving out what is not known, so an editor or a
/// terminal can jump to the place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `--flag`) the bad input came from.
    pub source_name: String,
    /// The 1-based line, when the input is a file.
    pub line: Option<usize>,
    /// The 1-based column, when the input is a file.
    pub column: Option<usize>,
    /// The key (`rule[2].cron`) or flag, when one is to blame.
    pub key: Option<String>,
    /// What is wrong, and how to write it instead.
    pub message: String,
}

impl ConfigError {
    /// An error about a command-line flag (or another input without lines).
    pub fn flag(flag: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            source_name: flag.into(),
            line: None,
            column: None,
            key: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source_name)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A template that cannot be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `{name}` is not a placeholder taskbus knows.
    #[error("unknown placeholder {placeholder} at byte {offset} of template {template:?}; known placeholders: {known}")]
    UnknownPlaceholder {
        /// The template as written.
        template: String,
        /// The placeholder, with its braces.
        placeholder: String,
        /// Its byte offset in the template.
        offset: usize,
        /// The placeholders that exist.
        known: &'static str,
    },
    /// `{meta:}` without a key.
    #[error("placeholder {{meta:}} at byte {offset} of template {template:?} names no key; write {{meta:KEY}}")]
    EmptyMetaKey {
        /// The template as written.
        template: String,
        /// The byte offset of the placeholder.
        offset: usize,
    },
    /// `{meta:key}` when rendering with a meta that has no `key`.
    #[error("template {template:?} needs meta key {key:?}, which the task's meta does not have")]
    MissingMeta {
        /// The template as written.
        template: String,
        /// The missing key.
        key: String,
    },
}

/// A cron expression that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct ScheduleError {
    /// The expression as written.
    pub expr: String,
    /// What is wrong and how to write it.
    pub reason: String,
}

/// A taskmaster service that stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskmasterError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A state file or directory could not be used.
    #[error("{action} {path}: {source}")]
    State {
        /// What the service was doing (`cannot create`, `cannot read` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration problem found while running.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl TaskmasterError {
    /// A [`TaskmasterError::State`].
    pub fn state(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TaskmasterError::State {
            action,
            path: path.into(),
            source,
        }
    }
}
