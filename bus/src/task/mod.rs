//! The task: a small JSON object, wire-compatible with pcelvng/task.

mod codec;
pub mod meta;
mod result;
pub mod time;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use codec::TaskDecodeError;
pub use meta::{Meta, MetaError};
pub use result::{TaskResult, UnknownResult};

/// A unit of work, and once done, its outcome.
///
/// On the wire the fields appear in pcelvng/task's order — `type`, `job`, `info`, `created`, `id`, `meta`,
/// `result`, `msg`, `started`, `ended` — then any fields this version does not know, which are kept and
/// written back. Empty fields are left out; HTML characters are not escaped.
///
/// ```
/// use taskbus_bus::{Task, TaskResult};
/// let mut task = Task::new("hello", "s3://bucket/path?day=2024-01-02");
/// task.start();
/// task.end(TaskResult::Complete, "said hello");
/// let line = task.to_json();
/// let back = Task::from_json(line.as_bytes()).unwrap();
/// assert_eq!(back, task);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Task {
    /// `type`: the kind of work, and by default the topic it travels on.
    pub kind: String,
    /// `job`: a sub-kind of `type`, optional.
    pub job: String,
    /// `info`: what to work on, by convention a URI (`path?k=v`).
    pub info: String,
    /// `created`: when the task was made.
    pub created: Option<DateTime<Utc>>,
    /// `id`: a UUID; retries and workflow children keep it.
    pub id: String,
    /// `meta`: key/value pairs for taskmasters and the framework.
    pub meta: Meta,
    /// `result`: how the task ended, once done.
    pub result: Option<TaskResult>,
    /// `msg`: a message about the result.
    pub msg: String,
    /// `started`: when a worker began the task.
    pub started: Option<DateTime<Utc>>,
    /// `ended`: when the worker finished.
    pub ended: Option<DateTime<Utc>>,
    /// Fields this version does not know, kept in order and written back.
    pub extra: Map<String, Value>,
}

impl Task {
    /// A new task of `kind` with `info`, a fresh id and `created` set to now.
    pub fn new(kind: impl Into<String>, info: impl Into<String>) -> Self {
        Self::with_id(kind, info, uuid::Uuid::new_v4().to_string())
    }

    /// A new task that reuses an id (retries, workflow runs, deterministic cron ticks).
    pub fn with_id(
        kind: impl Into<String>,
        info: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Task {
            kind: kind.into(),
            info: info.into(),
            id: id.into(),
            created: Some(time::now()),
            ..Task::default()
        }
    }

    /// Sets the job (builder style).
    pub fn job(mut self, job: impl Into<String>) -> Self {
        self.job = job.into();
        self
    }

    /// Sets a meta key (builder style).
    pub fn meta(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.meta.set(key, value);
        self
    }

    /// Marks the task as started now, clearing any earlier outcome (a task that is run again).
    pub fn start(&mut self) {
        self.started = Some(time::now());
        self.ended = None;
        self.result = None;
        self.msg.clear();
    }

    /// Marks the task as ended now with `result` and `msg`.
    pub fn end(&mut self, result: TaskResult, msg: impl Into<String>) {
        if self.started.is_none() {
            self.started = Some(time::now());
        }
        self.ended = Some(time::now());
        self.result = Some(result);
        self.msg = msg.into();
    }

    /// True once the task has a result.
    pub fn is_done(&self) -> bool {
        self.result.is_some()
    }

    /// `type:job`, or `type` when there is no job: how logs and taskmasters name a task's kind.
    pub fn kind_job(&self) -> String {
        if self.job.is_empty() {
            self.kind.clone()
        } else {
            format!("{}:{}", self.kind, self.job)
        }
    }

    /// How long the worker took, when both `started` and `ended` are set.
    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.ended? - self.started?)
    }

    /// The attempt number from meta (0 when unset or unreadable).
    pub fn attempt(&self) -> u32 {
        self.meta
            .get_parsed(meta::keys::ATTEMPT)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// A key that is the same for the same message sent twice, and differs between a task, its done
    /// task and each retry: brokers that de-duplicate (JetStream's `Nats-Msg-Id`) use it.
    /// `None` when the task has no id.
    pub fn dedup_key(&self) -> Option<String> {
        if self.id.is_empty() {
            return None;
        }
        let result = self.result.map_or("todo", TaskResult::as_str);
        Some(format!(
            "{}:{}:{}:{}:{}",
            self.kind,
            self.job,
            self.id,
            self.attempt(),
            result
        ))
    }
}
