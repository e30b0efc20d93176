//! [`Launcher`]: fetches tasks, runs them on a [`Worker`] with bounded concurrency, publishes done
//! tasks, and shuts down without losing any.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use taskbus_bus::{Bus, BusError, ConsumerOptions, Subscription};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::execute::{self, Shared};
use crate::stats::State;
use crate::{LauncherOptions, OnShutdown, Shutdown, Stats, StatsSnapshot, Worker, WorkerError};

/// Runs a [`Worker`] on the tasks of one topic.
///
/// - Up to `max_in_progress` tasks run at once; their done tasks are published concurrently.
/// - For each task: `started` is stamped, the worker runs (under its timeout, with its lease kept
///   alive), `ended`, `result` and `msg` are set, the worker's meta is merged in, the done task is
///   published to `done_topic`, and only once the bus confirmed it is the input acked. If the publish
///   fails, the input is nacked so it comes back, and the failure is logged with the task id.
/// - A panicking worker gives an `error` done task with the panic message; the launcher carries on.
/// - [`run`](Launcher::run) returns when the input ends (a finite topic, `stdio:`), after
///   `lifetime_workers` tasks, or after a shutdown (SIGINT/SIGTERM, or [`Shutdown::request`]) — each
///   time after the running tasks are settled.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use taskbus_bus::{Bus, Task};
/// use taskbus_worker::{from_info, Launcher, LauncherOptions, Outcome, Stopped};
///
/// let bus = Bus::connect("mem:launcher-doc").await?;
/// bus.send("hello", &Task::new("hello", "world")).await?;
///
/// let worker = from_info(|info: String| async move { Outcome::complete(format!("hello {info}")) });
/// let options = LauncherOptions::default().max_in_progress(16).finite(true);
/// let report = Launcher::new(bus.clone(), "hello", options).run(worker).await?;
/// assert_eq!(report.stopped, Stopped::EndOfInput);
/// assert_eq!(report.stats.done.complete, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Launcher {
    bus: Bus,
    topic: String,
    options: LauncherOptions,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    http: Option<TcpListener>,
}

/// Why [`Launcher::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// The input ended (a finite topic drained, or stdin closed).
    EndOfInput,
    /// `lifetime_workers` tasks were run.
    Lifetime,
    /// A shutdown was asked for (a signal or [`Shutdown::request`]).
    Shutdown,
}

/// What a launcher did, returned by [`Launcher::run`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// Why it stopped.
    pub stopped: Stopped,
    /// The final statistics.
    pub stats: StatsSnapshot,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.stopped {
            Stopped::EndOfInput => "end of input",
            Stopped::Lifetime => "lifetime_workers reached",
            Stopped::Shutdown => "shutdown",
        };
        let s = &self.stats;
        write!(
            f,
            "stopped ({why}): {} consumed, {} complete, {} error, {} warn, {} alert",
            s.consumed, s.done.complete, s.done.error, s.done.warn, s.done.alert
        )?;
        for (n, what) in [
            (s.rejected, "rejected"),
            (s.ignored, "ignored"),
            (s.expired, "past deadline"),
            (s.timed_out, "timed out"),
            (s.panicked, "panicked"),
            (s.interrupted, "interrupted"),
            (s.redelivered, "handed back"),
            (s.publish_failures, "done-task publish failures"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        let t = &s.task_time;
        write!(
            f,
            "; task time mean {:.1}ms p99 {:.1}ms",
            t.mean_ms, t.p99_ms
        )
    }
}

impl Launcher {
    /// A launcher of the tasks on `topic` of `bus`.
    pub fn new(bus: Bus, topic: impl Into<String>, options: LauncherOptions) -> Self {
        Launcher {
            bus,
            topic: topic.into(),
            options,
            stats: Arc::new(Stats::new()),
            shutdown: Shutdown::new(),
            http: None,
        }
    }

    /// The live statistics (the same that `/stats` serves).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// A handle that stops [`run`](Launcher::run) from another task.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The options.
    pub fn options(&self) -> &LauncherOptions {
        &self.options
    }

    /// Opens the status port now (instead of when `run` starts) and returns its address: bind port 0
    /// to get a free one. Overrides the `http_addr` option.
    pub async fn bind_http(&mut self, addr: SocketAddr) -> Result<SocketAddr, WorkerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WorkerError::Http { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| WorkerError::Http { addr, source })?;
        self.http = Some(listener);
        Ok(local)
    }

    /// Runs `worker` until the input ends, `lifetime_workers` is reached, or a shutdown; see the type's
    /// docs. Errors only when the topic cannot be subscribed to, the status port cannot be opened, or
    /// the subscription fails for good; a failing task never stops it.
    pub async fn run(mut self, worker: impl Worker) -> Result<Report, WorkerError> {
        let aux = CancellationToken::new();
        let _stop_aux = aux.clone().drop_guard();
        if self.options.handle_signals {
            self.shutdown.listen_for_signals(aux.clone());
        }
        if let (None, Some(addr)) = (&self.http, self.options.http_addr) {
            self.bind_http(addr).await?;
        }
        if let Some(listener) = self.http.take() {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving /healthz, /stats and /metrics");
            }
            tokio::spawn(crate::http::serve(listener, self.stats(), aux.clone()));
        }
        let mut sub = self.subscribe().await?;
        let heartbeat = self
            .options
            .heartbeat
            .filter(|_| self.bus.capabilities().in_progress);
        let shared = Arc::new(Shared {
            bus: self.bus.clone(),
            options: self.options.clone(),
            stats: self.stats(),
            kill: CancellationToken::new(),
            heartbeat,
            worker: Arc::new(worker),
            on_shutdown: match self.options.on_shutdown {
                OnShutdown::Auto if self.bus.capabilities().persistent => OnShutdown::Redeliver,
                OnShutdown::Auto => OnShutdown::Fail,
                chosen => chosen,
            },
        });
        tracing::info!(topic = %self.topic, group = %self.options.group, bus = %self.bus.url(),
            max_in_progress = self.options.max_in_progress, "worker started");
        let tracker = TaskTracker::new();
        let fetched = self.fetch(&mut sub, &shared, &tracker).await;
        self.stats.set_state(State::Draining);
        if let Err(e) = sub.close().await {
            tracing::warn!(error = %e, "cannot close the subscription");
        }
        tracker.close();
        self.drain(&tracker, &shared).await;
        self.stats.set_state(State::Stopped);
        let report = Report {
            stopped: fetched?,
            stats: self.stats.snapshot(),
        };
        tracing::info!("{report}");
        Ok(report)
    }

    async fn subscribe(&self) -> Result<Subscription, WorkerError> {
        let options = ConsumerOptions::group(self.options.group.clone())
            .finite(self.options.finite)
            .max_in_flight(self.options.max_in_progress);
        self.bus
            .subscribe_with(&self.topic, options)
            .await
            .map_err(|source| WorkerError::Subscribe {
                topic: self.topic.clone(),
                group: self.options.group.clone(),
                bus: self.bus.url().to_owned(),
                source,
            })
    }

    /// Fetches and dispatches tasks until the input ends, the lifetime is reached or a shutdown.
    async fn fetch(
        &self,
        sub: &mut Subscription,
        shared: &Arc<Shared>,
        tracker: &TaskTracker,
    ) -> Result<Stopped, WorkerError> {
        let slots = Arc::new(Semaphore::new(self.options.max_in_progress.max(1)));
        let mut taken = 0u64;
        let mut failures = 0u32;
        loop {
            if self.options.lifetime_workers.is_some_and(|n| taken >= n) {
                return Ok(Stopped::Lifetime);
            }
            let permit = tokio::select! {
                biased;
                () = self.shutdown.requested() => return Ok(Stopped::Shutdown),
                permit = Arc::clone(&slots).acquire_owned() => permit,
            };
            let Ok(permit) = permit else {
                return Ok(Stopped::Shutdown);
            };
            let next = tokio::select! {
                biased;
                () = self.shutdown.requested() => return Ok(Stopped::Shutdown),
                next = sub.next() => next,
            };
            let received = match next {
                Ok(Some(received)) => received,
                Ok(None) => return Ok(Stopped::EndOfInput),
                Err(e) => {
                    failures += 1;
                    self.fetch_failed(e, failures).await?;
                    continue;
                }
            };
            failures = 0;
            Stats::bump(&self.stats.consumed);
            let shared = Arc::clone(shared);
            if self.options.accepts(&received.task.kind) {
                taken += 1;
                tracker.spawn(execute::run_task(shared, received, permit));
            } else {
                tracker.spawn(execute::other_type(shared, received, permit));
            }
        }
    }

    /// Logs a failed fetch and waits before the next try (longer after each failure, up to 5s);
    /// a closed bus ends the launcher.
    async fn fetch_failed(&self, e: BusError, failures: u32) -> Result<(), WorkerError> {
        if matches!(e, BusError::Closed(_)) {
            return Err(WorkerError::Consume {
                topic: self.topic.clone(),
                source: e,
            });
        }
        let wait =
            Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
        tracing::warn!(topic = %self.topic, error = %e, retry_in = ?wait, "cannot fetch the next task");
        tokio::select! {
            () = self.shutdown.requested() => {}
            () = tokio::time::sleep(wait) => {}
        }
        Ok(())
    }

    /// Waits for the running tasks. Without a shutdown, as long as they take; after one, up to
    /// `worker_kill_time` (or a second signal), then cancels them and waits for them to settle.
    async fn drain(&self, tracker: &TaskTracker, shared: &Shared) {
        let all_settled = tracker.wait();
        tokio::pin!(all_settled);
        let kill_time = async {
            self.shutdown.requested().await;
            tokio::select! {
                () = tokio::time::sleep(self.options.worker_kill_time) => {}
                () = self.shutdown.killed() => {}
            }
        };
        tokio::select! {
            () = &mut all_settled => return,
            () = kill_time => {}
        }
        let running = self
            .stats
            .running
            .load(std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(running, on_shutdown = ?shared.on_shutdown,
            "worker_kill_time passed: cancelling the running tasks");
        shared.kill.cancel();
        all_settled.await;
    }
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher")
            .field("bus", &self.bus)
            .field("topic", &self.topic)
            .field("options", &self.options)
            .finish()
    }
}
