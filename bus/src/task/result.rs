//! The outcome of a done task.

use std::fmt;
use std::str::FromStr;

/// How a task ended: the `result` field of a done task.
///
/// `warn` and `alert` never retry: `warn` is a non-critical problem, `alert` asks a human to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskResult {
    /// The work is done.
    Complete,
    /// The work failed; a retry policy may run it again.
    Error,
    /// A non-critical problem; not retried.
    Warn,
    /// A problem that needs a human; not retried.
    Alert,
}

impl TaskResult {
    /// Every result, in wire order.
    pub const ALL: [TaskResult; 4] = [Self::Complete, Self::Error, Self::Warn, Self::Alert];

    /// The wire form: `complete`, `error`, `warn` or `alert`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Alert => "alert",
        }
    }
}

impl fmt::Display for TaskResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `result` value that is not one of `complete`, `error`, `warn`, `alert`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task result {0:?}: expected one of complete, error, warn, alert")]
pub struct UnknownResult(pub String);

impl FromStr for TaskResult {
    type Err = UnknownResult;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "complete" => Ok(Self::Complete),
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "alert" => Ok(Self::Alert),
            other => Err(UnknownResult(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_result() {
        for r in TaskResult::ALL {
            assert_eq!(r.to_string().parse::<TaskResult>(), Ok(r));
        }
        assert!("done".parse::<TaskResult>().is_err());
    }
}
