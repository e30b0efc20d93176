//! [`TaskContext`]: what a worker sees besides the task — cancellation, progress, meta for the done task.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use taskbus_bus::Meta;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The context of one task run: a cancellation token, progress reporting, and meta keys for the
/// done task. Cheap to clone; clones share the same run.
///
/// The token is cancelled when the task's timeout passes or when the launcher shuts down and
/// `worker_kill_time` has passed. A worker that checks it (or selects on
/// [`cancelled`](TaskContext::cancelled)) can stop cleanly; one that does not is dropped after the
/// launcher's `cancel_grace`.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

struct Inner {
    cancel: CancellationToken,
    progress: Mutex<Option<String>>,
    meta: Mutex<Meta>,
    progressed: Notify,
    timeout: Option<Duration>,
    delivery_count: u32,
}

impl TaskContext {
    /// A context for a task with `timeout`, delivered for the `delivery_count`-th time. The launcher
    /// makes these; tests of a worker's own logic can too.
    pub fn new(timeout: Option<Duration>, delivery_count: u32) -> Self {
        TaskContext {
            inner: Arc::new(Inner {
                cancel: CancellationToken::new(),
                progress: Mutex::new(None),
                meta: Mutex::new(Meta::new()),
                progressed: Notify::new(),
                timeout,
                delivery_count,
            }),
        }
    }

    /// The token cancelled when the task must stop (timeout, shutdown).
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// True once the task must stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the task must stop: select on it around long awaits.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// Reports progress (`"25%"`, `"3 of 12 files"`). It is logged, shown in the launcher's `/stats`,
    /// extends the delivery's lease at once, and is written to the done task's `progress` meta key
    /// when the task does not complete (so a failure says how far it got).
    pub fn progress(&self, progress: impl fmt::Display) {
        let progress = progress.to_string();
        tracing::debug!(%progress, "task progress");
        *lock(&self.inner.progress) = Some(progress);
        self.inner.progressed.notify_one();
    }

    /// The last progress reported.
    pub fn current_progress(&self) -> Option<String> {
        lock(&self.inner.progress).clone()
    }

    /// Sets a meta key of the done task. Keys the worker's [`Outcome`](crate::Outcome) sets win over
    /// these; both win over the task's own keys. Kept even when the worker panics or times out.
    pub fn set_meta(&self, key: impl Into<String>, value: impl ToString) {
        lock(&self.inner.meta).set(key, value);
    }

    /// The meta keys set so far.
    pub fn meta(&self) -> Meta {
        lock(&self.inner.meta).clone()
    }

    /// How long the task may run (from the task's `timeout` meta key or the launcher's option).
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout
    }

    /// How many times the bus has handed this task to this consumer group (1 the first time): more
    /// than 1 means an earlier run did not finish (a crash, a shutdown) and this is a redo.
    pub fn delivery_count(&self) -> u32 {
        self.inner.delivery_count
    }

    pub(crate) fn cancel(&self) {
        self.inner.cancel.cancel();
    }

    /// Completes at the next [`progress`](TaskContext::progress) call.
    pub(crate) async fn progressed(&self) {
        self.inner.progressed.notified().await;
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("cancelled", &self.is_cancelled())
            .field("progress", &self.current_progress())
            .field("timeout", &self.inner.timeout)
            .field("delivery_count", &self.inner.delivery_count)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
