//! # taskbus-worker
//!
//! Doing tasks: the [`Worker`] trait and the [`Launcher`], which runs a worker on the tasks of a topic
//! with at-least-once delivery — an input task is acked only after its done task is confirmed published,
//! so a crashed or killed worker never loses a task.
//!
//! A complete worker binary (`examples/hello/worker.rs`; with no `TASKBUS_BUS` it reads tasks from stdin
//! and writes done tasks to stdout, and exits 0 when stdin ends):
//!
//! ```
#![doc = include_str!("../examples/hello/worker.rs")]
//! ```
//!
//! ## The parts
//!
//! - [`Worker`]: implement it, or make one from an async closure with [`from_fn`] (the whole task and
//!   its [`TaskContext`]) or [`from_info`] (the `info` string).
//! - [`Outcome`]: `complete`, `error`, `warn`, `alert`, with typed retry hints
//!   ([`no_retry`](Outcome::no_retry), [`retry_after`](Outcome::retry_after)) and meta for the done task.
//! - [`TaskContext`]: the cancellation token, [`progress`](TaskContext::progress) reports (which also
//!   keep the task's lease alive), meta for the done task.
//! - [`Launcher`] and [`LauncherOptions`]: concurrency, lifetime, timeouts, deadlines, task types,
//!   shutdown; [`Shutdown`] stops it from code; [`Stats`] and the optional status port (`/healthz`,
//!   `/stats`, `/metrics`) show what it does.
//! - [`testing`]: run a worker on tasks in memory and get the done tasks back, for your tests.
//!
//! ## The done task
//!
//! The launcher answers every task it takes with exactly one done task on `done_topic` (or hands it
//! back to the bus to be redone), built from the input: `started` stamped when the worker begins,
//! `ended`, `result`, `msg` when it ends, and the worker's meta merged over the task's own (the worker's
//! keys win). Tasks that are not run still get a done task saying why:
//!
//! | case | result | msg starts with | meta |
//! |---|---|---|---|
//! | the worker returned | its result | its message | its keys |
//! | the worker panicked | `error` | `worker panicked:` | |
//! | the timeout passed (option `timeout`, or meta `timeout=30s`) | `error` | `timed out:` | `progress` if reported |
//! | the start deadline passed (meta `deadline=<RFC 3339>`) | `error` | `not started:` | `no_retry=true` |
//! | a type it does not do, with [`OtherTypes::Reject`] | `error` | `rejected:` | `no_retry=true` |
//! | cut off by a shutdown, with [`OnShutdown::Fail`] | `error` | `interrupted at shutdown:` | `progress` if reported |
//!
//! A task whose deadline passed or that was rejected has no `started`. A cancelled worker that still
//! returns `complete` within `cancel_grace` counts as complete.
//!
//! ## Shutdown and the end of input
//!
//! On SIGINT or SIGTERM (or [`Shutdown::request`]) the launcher stops fetching; running tasks may finish
//! for up to `worker_kill_time`, their done tasks published and inputs acked over the still-open bus.
//! Then the rest are cancelled (their [`TaskContext`] token fires; after `cancel_grace` their futures
//! are dropped) and, by default on a persistent bus ([`OnShutdown::Auto`] →
//! [`OnShutdown::Redeliver`]), nacked so the bus hands them out again at once: a task cut off by a
//! deploy is redone, not failed. On a bus that does not outlive the process (`stdio:`, `mem:`), where
//! a nacked task would vanish, `Auto` means [`OnShutdown::Fail`]: an `interrupted at shutdown` error
//! done task is published instead, so nothing is lost silently. A second signal ends the wait at once. When a finite input
//! ends (`stdio:`, or the `finite` option), the launcher runs what it holds to the end — nothing is
//! cancelled — and [`Launcher::run`] returns `Ok`.
//!
//! ## Throughput
//!
//! One loop fetches; each task runs on its own tokio task, so up to `max_in_progress` workers run,
//! and their done tasks are published and acked, concurrently — nothing waits on another task's
//! publish. Set `max_in_progress` to a few hundred for short tasks.

mod context;
mod error;
mod execute;
mod http;
mod launcher;
pub mod metrics;
mod options;
mod outcome;
mod shutdown;
mod stats;
pub mod testing;
mod worker;

pub use async_trait::async_trait;
pub use context::TaskContext;
pub use error::WorkerError;
pub use launcher::{Launcher, Report, Stopped};
pub use options::{LauncherOptions, OnShutdown, OtherTypes};
pub use outcome::{IntoOutcome, Outcome};
pub use shutdown::Shutdown;
pub use stats::{DoneCounts, RunningTask, State, Stats, StatsSnapshot, TaskTime};
pub use worker::{from_fn, from_info, FnWorker, InfoWorker, Worker};
