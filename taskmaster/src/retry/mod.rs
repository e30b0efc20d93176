//! Retry: run failed tasks again, with backoff, and send the ones that will not be retried to a failed
//! topic.
//!
//! - [`RetryRules::decide`] — the pure decision for one done task.
//! - [`config`] — the rules file (`retry.toml`).
//! - [`RetryService`] — the bus loop.
//!
//! The app keeps no state: the attempt number travels in the task's meta (`attempt`), with the history
//! of failed attempts ([`HISTORY`]); a retried task keeps its id. A worker may set `no_retry=true` (do
//! not retry) or `retry_after=2m` (retry after this delay instead of the rule's) in the done task's
//! meta, and a `deadline` in meta stops retries that would start after it. `warn` and `alert` results
//! are never retried.
//!
//! ```
//! use taskbus_taskmaster::retry::{config, Decision};
//! use taskbus_taskmaster::config::ConfigFile;
//! use taskbus_bus::{Task, TaskResult};
//!
//! let cfg = config::parse(&ConfigFile::new("retry.toml", r#"
//!     [[rule]]
//!     type = "flaky"
//!     retries = 2
//!     delay = "10s"
//!     backoff = "exponential"
//! "#))?;
//! let mut done = Task::new("flaky", "x");
//! done.end(TaskResult::Error, "timeout");
//! match cfg.rules.decide(&done, chrono::Utc::now()) {
//!     Decision::Retry { task, due, .. } => {
//!         assert_eq!(task.attempt(), 1);
//!         assert_eq!(task.id, done.id);
//!         assert_eq!(due, done.ended.unwrap() + chrono::Duration::seconds(10));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), taskbus_taskmaster::ConfigError>(())
//! ```

pub mod config;
mod rules;
mod service;

pub use config::RetryConfig;
pub use rules::{Backoff, Decision, Policy, RetryRule, RetryRules, FAILED_REASON, HISTORY};
pub use service::{RetryOptions, RetryService};
