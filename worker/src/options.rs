//! [`LauncherOptions`]: how a [`Launcher`](crate::Launcher) runs tasks.

use std::net::SocketAddr;
use std::time::Duration;

/// What the launcher does with a task whose `type` is not one of [`LauncherOptions::task_types`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OtherTypes {
    /// Publish a done task with result `error`, msg `rejected: type "X" …` and meta `no_retry=true`,
    /// then ack the input. The task ends here, visibly, on the done topic. The default.
    #[default]
    Reject,
    /// Leave the task for another member of the consumer group: nack it after
    /// [`LauncherOptions::ignore_delay`]. Nothing is published. If no member takes it, the bus moves
    /// it to its dead-letter topic once it has been delivered more than the bus's `max_deliveries`
    /// times, so it is never lost silently.
    Ignore,
}

/// What the launcher does with a task still running when a shutdown's `worker_kill_time` has passed
/// (or a second signal came). Its cancellation token fires; a worker that still returns `complete`
/// within `cancel_grace` counts as complete. Otherwise — it returned something else, which is taken
/// to be the effect of the cancellation, or it did not return and its future was dropped — this rule
/// applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnShutdown {
    /// [`Redeliver`](OnShutdown::Redeliver) on a bus that keeps messages beyond the process
    /// (`file://`, brokers); [`Fail`](OnShutdown::Fail) on one that does not (`stdio:`, `mem:`), where
    /// a task handed back would vanish with the process. The default.
    #[default]
    Auto,
    /// Nack the input so the bus hands it out again at once (to another worker, or to this one after a
    /// restart), and publish nothing: the task was cut off, not failed, and is redone.
    Redeliver,
    /// Publish a done task with result `error` and msg `interrupted at shutdown …`, then ack the input:
    /// the retry policy decides what happens next.
    Fail,
}

/// Options of a [`Launcher`](crate::Launcher). Start from [`LauncherOptions::default`] and set what you
/// need builder-style.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `group` | `workers` | the consumer group: launchers of one group share the topic's tasks |
/// | `max_in_progress` | `1` | tasks run at once |
/// | `lifetime_workers` | unlimited | run exactly this many tasks, then stop fetching and return |
/// | `worker_kill_time` | `10s` | at shutdown, how long running tasks may take to finish |
/// | `cancel_grace` | `1s` | after cancelling a task's token, how long before its future is dropped |
/// | `done_topic` | `done` | where done tasks go |
/// | `task_types` | any | the task types this worker does |
/// | `other_types` | [`OtherTypes::Reject`] | what happens to the others |
/// | `ignore_delay` | `1s` | the nack delay of an ignored task |
/// | `timeout` | none | how long a task may run; a task's `timeout` meta key wins |
/// | `heartbeat` | `10s` | how often a running task's lease is extended (`Delivery::in_progress`); keep it under a third of the bus's ack wait |
/// | `finite` | `false` | end when the topic is drained instead of waiting for more (always so on `stdio:`) |
/// | `on_shutdown` | [`OnShutdown::Auto`] | what happens to tasks cut off by a shutdown |
/// | `handle_signals` | `true` | SIGINT/SIGTERM start a graceful shutdown, a second one shortens it |
/// | `publish_retry_delay` | `1s` | the nack delay of a task whose done task could not be published |
/// | `http_addr` | none | serve `/healthz`, `/stats` and `/metrics` here |
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LauncherOptions {
    /// The consumer group.
    pub group: String,
    /// Tasks run at once (at least 1).
    pub max_in_progress: usize,
    /// Run exactly this many tasks, then return. Counted are tasks of an accepted type (a task that
    /// missed its deadline counts: it got its done task); rejected and ignored tasks are not.
    pub lifetime_workers: Option<u64>,
    /// At shutdown, how long running tasks may take to finish before they are cancelled.
    pub worker_kill_time: Duration,
    /// After a task's cancellation token is cancelled (timeout, kill), how long its worker has to
    /// return before its future is dropped.
    pub cancel_grace: Duration,
    /// The topic done tasks are published to.
    pub done_topic: String,
    /// The task types (`type` field) this worker does; empty means every type.
    pub task_types: Vec<String>,
    /// What happens to tasks of other types.
    pub other_types: OtherTypes,
    /// The nack delay of an ignored task.
    pub ignore_delay: Duration,
    /// The default per-task timeout; a task's `timeout` meta key overrides it.
    pub timeout: Option<Duration>,
    /// How often the lease of a running task is extended; `None` never.
    pub heartbeat: Option<Duration>,
    /// End when the topic is drained.
    pub finite: bool,
    /// What happens to tasks cut off by a shutdown.
    pub on_shutdown: OnShutdown,
    /// Listen for SIGINT and SIGTERM (Ctrl-C elsewhere). Tokio's handlers stay installed for the
    /// rest of the process, so after the launcher returns these signals no longer end the process by
    /// themselves: a binary should return from `main`, as it does when `run` returns.
    pub handle_signals: bool,
    /// The nack delay of a task whose done task could not be published.
    pub publish_retry_delay: Duration,
    /// Where to serve `/healthz`, `/stats` and `/metrics`.
    pub http_addr: Option<SocketAddr>,
}

impl Default for LauncherOptions {
    fn default() -> Self {
        LauncherOptions {
            group: "workers".to_owned(),
            max_in_progress: 1,
            lifetime_workers: None,
            worker_kill_time: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(1),
            done_topic: "done".to_owned(),
            task_types: Vec::new(),
            other_types: OtherTypes::Reject,
            ignore_delay: Duration::from_secs(1),
            timeout: None,
            heartbeat: Some(Duration::from_secs(10)),
            finite: false,
            on_shutdown: OnShutdown::Auto,
            handle_signals: true,
            publish_retry_delay: Duration::from_secs(1),
            http_addr: None,
        }
    }
}

impl LauncherOptions {
    /// Sets the consumer group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets how many tasks run at once (at least 1).
    pub fn max_in_progress(mut self, n: usize) -> Self {
        self.max_in_progress = n.max(1);
        self
    }

    /// Runs exactly `n` tasks, then returns; 0 means unlimited.
    pub fn lifetime_workers(mut self, n: u64) -> Self {
        self.lifetime_workers = (n > 0).then_some(n);
        self
    }

    /// Sets how long running tasks may take to finish at shutdown.
    pub fn worker_kill_time(mut self, d: Duration) -> Self {
        self.worker_kill_time = d;
        self
    }

    /// Sets how long a cancelled worker has to return before its future is dropped.
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.cancel_grace = d;
        self
    }

    /// Sets the done topic.
    pub fn done_topic(mut self, topic: impl Into<String>) -> Self {
        self.done_topic = topic.into();
        self
    }

    /// Adds a task type this worker does (call again for more).
    pub fn task_type(mut self, kind: impl Into<String>) -> Self {
        self.task_types.push(kind.into());
        self
    }

    /// Sets what happens to tasks of other types.
    pub fn other_types(mut self, what: OtherTypes) -> Self {
        self.other_types = what;
        self
    }

    /// Sets the nack delay of ignored tasks.
    pub fn ignore_delay(mut self, d: Duration) -> Self {
        self.ignore_delay = d;
        self
    }

    /// Sets the default per-task timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Sets how often a running task's lease is extended; `None` never.
    pub fn heartbeat(mut self, every: Option<Duration>) -> Self {
        self.heartbeat = every.filter(|d| !d.is_zero());
        self
    }

    /// Ends when the topic is drained.
    pub fn finite(mut self, finite: bool) -> Self {
        self.finite = finite;
        self
    }

    /// Sets what happens to tasks cut off by a shutdown.
    pub fn on_shutdown(mut self, what: OnShutdown) -> Self {
        self.on_shutdown = what;
        self
    }

    /// Listens for SIGINT/SIGTERM or not.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Sets the nack delay of a task whose done task could not be published.
    pub fn publish_retry_delay(mut self, d: Duration) -> Self {
        self.publish_retry_delay = d;
        self
    }

    /// Serves `/healthz`, `/stats` and `/metrics` on `addr`.
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(addr);
        self
    }

    /// True when tasks of `kind` are this worker's.
    pub fn accepts(&self, kind: &str) -> bool {
        self.task_types.is_empty() || self.task_types.iter().any(|t| t == kind)
    }
}
