//! Flow: workflows as DAGs built from completions — "when these tasks complete, start those".
//!
//! - [`config`] — workflow files (TOML `[[phase]]` tables, flowlord's files too), checked on load,
//!   reloaded when they change ([`WorkflowSet`]).
//! - [`Workflow`] — the checked DAG and how each phase's task is made.
//! - [`Engine`] — the pure state machine: done tasks and cron ticks in, [`Record`]s out.
//! - [`journal`] — where the records of each run are kept.
//! - [`FlowService`] — the bus loop of `taskbus flow`.
//! - [`graph`] and [`status`] — a workflow as a tree or Graphviz dot, a run as a table.
//!
//! ## Runs
//!
//! A run is started by a root phase's task: by its cron rule (one run per workflow and tick, so root
//! phases firing at the same tick share it), or sent by hand (`taskbus flow start`, or any task of a
//! root phase's type and job that has no `workflow` meta: its id becomes the run id). Every task
//! the app sends carries meta `workflow`, `run`, `phase` and `scheduled`, and a deterministic id
//! (UUID v5 of workflow, run and phase). When a done task comes back `complete` (or `warn`), each
//! child whose parents have all completed in the same run starts — a child with several parents
//! starts once, when the last of them completes — with the parents' done meta readable by its
//! templates (`{meta:key}`, or `{meta:PARENT.key}` for one parent's value) and the run's scheduled
//! time passed down (each phase renders at its first parent's time plus its own `offset`).
//! A child whose `require` keys are missing is skipped, with its descendants.
//!
//! An `error` is retried by the phase's `retry` rule with the [`retry`](crate::retry) engine (same
//! id, `attempt` one more, backoff from the task's end time); when it fails for good (retries
//! exhausted, `no_retry`, an `alert` result), the phase is failed, its descendants do not start, the
//! run is marked failed with the reason, and a copy of the task goes to the failed topic.
//!
//! ```
//! use taskbus_taskmaster::config::ConfigFile;
//! use taskbus_taskmaster::flow::{config, Engine, PhaseStatus};
//! use taskbus_bus::{Task, TaskResult};
//! use std::sync::Arc;
//!
//! let parsed = config::parse(&ConfigFile::new("d.toml", r#"
//!     [[phase]]
//!     task = "a"
//!     rule = { cron = "@daily" }
//!     [[phase]]
//!     task = "b"
//!     depends_on = "a"
//!     template = "?day={yyyy}-{mm}-{dd}&from={meta:rows}"
//! "#), "d.toml")?;
//! let mut engine = Engine::new([Arc::new(parsed.workflow)], None);
//! let now = "2024-01-02T00:00:05Z".parse().unwrap();
//! let records = engine.on_tick("d.toml", 0, "2024-01-02T00:00:00Z".parse().unwrap(), now);
//! let key = records[0].0.clone();
//! let a = engine.outbox().next().unwrap().task.clone();      // the root task, to send
//! let mut done = a.clone().meta("rows", 42);
//! done.end(TaskResult::Complete, "ok");
//! let target = engine.route(&done).unwrap().remove(0);
//! engine.on_done(&target, &done, now);
//! let b = engine.outbox().find(|e| e.phase == "b").unwrap();
//! assert_eq!(b.task.info, "?day=2024-01-02&from=42");
//! assert_eq!(b.task.meta.get("run"), Some(key.run.as_str()));
//! assert_eq!(engine.run(&key).unwrap().phases[1].status, PhaseStatus::Queued);
//! # Ok::<(), taskbus_taskmaster::flow::config::LoadError>(())
//! ```
//!
//! ## Restart safety: how the state survives
//!
//! The state of every run is a journal, an append-only file of [`Record`]s under the state
//! directory (`--state`, by default `DIR/.flow` for `file://DIR`): the engine's decisions are the
//! records, and replaying them rebuilds the state exactly. The app works in this order:
//!
//! 1. A batch of done tasks is read, unacked, from the done topic in the app's group.
//! 2. The engine decides; the records (the done task, the children or retry queued, failures) are
//!    appended to the journals in one write per run (`--fsync` to wait for the disk).
//! 3. Only then are the done messages acked. Killed before, they come back, and a done task already
//!    recorded is recognised: it decides nothing new, except children a cut-short write missed.
//! 4. The queued tasks (the outbox) are sent; once the bus confirms, a `sent` record follows.
//!    Killed before the tasks are sent, the next start sends them.
//!
//! A run with nothing left to do gets an `end` record and leaves memory; a restart reads only the
//! journals that do not end with one (a late done task of a finished run reads its journal again).
//!
//! Restarted, the app replays the journals, so no child is lost; a child decided once is never
//! decided again (the run remembers it), and fan-in counts survive. The one moment a task could go
//! out twice is between the bus confirming a send and the `sent` record: at start, tasks queued but
//! not recorded sent are looked for on their topic — on buses that can be read from the start
//! (file, NATS, Kafka, mem), in a fresh consumer group `flow-verify-…`, by the task's
//! de-duplication key (type, job, id, attempt) — and only those not found are sent. On a bus that
//! cannot (AMQP), they are sent again with the same id and a warning; JetStream's duplicate window
//! drops such a resend by itself.
//!
//! Limits, in words:
//! - One app per state directory: a second one refuses to start (a lock says so). For failover,
//!   start the next one on the same directory once the first is gone.
//! - The search reads the whole topic (cost grows with it), and leaves its small group behind.
//! - A run follows the current version of its workflow: a reload changes in-flight runs too; a
//!   phase removed from the file is no longer tracked (its tasks in the outbox are still sent).
//!   A workflow file removed starts no new run, while its runs in flight go on until the app
//!   restarts; after a restart, done tasks of workflows not loaded are acked and ignored (logged).
//! - With `fsync = false` (the default) a machine crash can lose the last journal writes: then a
//!   done task acked just before is lost with them (the run waits); a process crash loses nothing.
//! - Journals of runs untouched for `--keep` (7 days) are deleted; a done task of a forgotten run is
//!   treated as new.
//! - Do not also give a workflow's phases rules in `taskbus retry`: flow retries them itself.

pub mod config;
pub mod graph;
pub mod journal;
mod lock;
mod rules;
mod service;
pub mod status;
mod ticks;
mod workflow;

pub use config::{LoadError, WorkflowSet};
pub use rules::{
    info_time, Decided, Engine, OutboxEntry, PhaseRun, PhaseStatus, Record, Run, RunKey,
    RunOutcome, Target,
};
pub use service::{FlowOptions, FlowService};
pub use ticks::{Tick, Ticks};
pub use workflow::{
    CronTrigger, Cycle, Phase, RunInfo, Trigger, Workflow, FLOW_NAMESPACE, FRAMEWORK_KEYS,
};
