//! [`Outcome`]: how a worker says a task ended, with typed retry hints and meta for the done task.

use std::fmt;
use std::time::Duration;

use taskbus_bus::task::meta::keys;
use taskbus_bus::{Meta, TaskResult};

/// How a task ended: a [`TaskResult`], a message, retry hints and meta keys for the done task.
///
/// Build one with [`Outcome::complete`], [`Outcome::error`], [`Outcome::warn`] or [`Outcome::alert`], then
/// add hints builder-style. The hints are written into the done task's meta, where the retry taskmaster
/// reads them: [`no_retry`](Outcome::no_retry) sets `no_retry=true`, [`retry_after`](Outcome::retry_after)
/// sets `retry_after=30s`.
///
/// ```
/// use std::time::Duration;
/// use taskbus_worker::Outcome;
///
/// let bad_input = Outcome::error("no such file: s3://b/x.csv").no_retry();
/// let busy = Outcome::error("database is busy").retry_after(Duration::from_secs(30));
/// let done = Outcome::complete("42 rows").meta("rows", 42);
/// # let _ = (bad_input, busy, done);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The result.
    pub result: TaskResult,
    /// The message for the done task's `msg`.
    pub msg: String,
    /// Meta keys merged into the done task (these win over the task's own keys).
    pub meta: Meta,
}

impl Outcome {
    /// An outcome with `result` and `msg`.
    pub fn new(result: TaskResult, msg: impl fmt::Display) -> Self {
        Outcome {
            result,
            msg: msg.to_string(),
            meta: Meta::new(),
        }
    }

    /// The work is done.
    pub fn complete(msg: impl fmt::Display) -> Self {
        Self::new(TaskResult::Complete, msg)
    }

    /// The work failed; a retry policy may run it again.
    pub fn error(msg: impl fmt::Display) -> Self {
        Self::new(TaskResult::Error, msg)
    }

    /// A non-critical problem; never retried.
    pub fn warn(msg: impl fmt::Display) -> Self {
        Self::new(TaskResult::Warn, msg)
    }

    /// A problem that needs a human; never retried.
    pub fn alert(msg: impl fmt::Display) -> Self {
        Self::new(TaskResult::Alert, msg)
    }

    /// Says the task must not be retried (meta `no_retry=true`): retrying cannot help.
    pub fn no_retry(mut self) -> Self {
        self.meta.set(keys::NO_RETRY, true);
        self
    }

    /// Asks for a retry after `delay` (meta `retry_after=30s`), overriding the retry policy's backoff.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.meta.set(keys::RETRY_AFTER, compact_duration(delay));
        self
    }

    /// Sets a meta key of the done task (builder style).
    pub fn meta(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.meta.set(key, value);
        self
    }

    /// True when the worker said not to retry.
    pub fn is_no_retry(&self) -> bool {
        self.meta.get(keys::NO_RETRY) == Some("true")
    }

    /// The retry delay the worker asked for, if any.
    pub fn retry_after_delay(&self) -> Option<Duration> {
        self.meta.get_duration(keys::RETRY_AFTER).ok().flatten()
    }
}

/// A duration as humantime writes it, without spaces (`1m30s`), so it reads back with
/// [`Meta::get_duration`] and needs no escaping in `meta`.
pub(crate) fn compact_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// What a worker may return: an [`Outcome`], `()` (complete), `(TaskResult, msg)`, or a `Result` of
/// any of these whose error is either an [`Outcome`] (used as it is, hints and all) or anything that
/// displays (an `error` outcome with that message).
///
/// ```
/// use taskbus_worker::{IntoOutcome, Outcome};
/// use taskbus_bus::TaskResult;
///
/// let ok: Result<(), std::io::Error> = Ok(());
/// assert_eq!(ok.into_outcome().result, TaskResult::Complete);
///
/// let failed: Result<Outcome, String> = Err("disk full".to_owned());
/// assert_eq!(failed.into_outcome(), Outcome::error("disk full"));
///
/// let typed: Result<(), Outcome> = Err(Outcome::error("bad input").no_retry());
/// assert!(typed.into_outcome().is_no_retry());
/// ```
pub trait IntoOutcome {
    /// Converts into an outcome.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::complete("")
    }
}

impl<M: fmt::Display> IntoOutcome for (TaskResult, M) {
    fn into_outcome(self) -> Outcome {
        Outcome::new(self.0, self.1)
    }
}

impl<O: IntoOutcome> IntoOutcome for Result<O, Outcome> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(o) => o.into_outcome(),
            Err(outcome) => outcome,
        }
    }
}

impl<O: IntoOutcome, E: fmt::Display> IntoOutcome for Result<O, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(o) => o.into_outcome(),
            Err(e) => Outcome::error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_written_as_meta_keys() {
        let o = Outcome::error("busy")
            .retry_after(Duration::from_secs(90))
            .no_retry();
        assert_eq!(o.meta.get(keys::RETRY_AFTER), Some("1m30s"));
        assert_eq!(o.retry_after_delay(), Some(Duration::from_secs(90)));
        assert_eq!(o.meta.get(keys::NO_RETRY), Some("true"));
        assert!(o.is_no_retry());
    }

    #[test]
    fn pcelvng_style_pairs_convert() {
        let o = (TaskResult::Warn, "half the rows").into_outcome();
        assert_eq!(o, Outcome::warn("half the rows"));
    }
}
