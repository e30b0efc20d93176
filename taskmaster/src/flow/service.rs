//! The bus loop of `taskbus flow`: read done tasks in the app's group, let the [`Engine`] decide,
//! write the decisions to the journal, ack, then send what was decided and record it sent. Cron
//! phases fire on their schedules; workflow files are reloaded when they change. All decisions are
//! the engine's; this file does the I/O and its order (see the module docs of [`flow`](super)).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use taskbus_bus::{Bus, ConsumerOptions, Received, Subscription, Task};
use tokio_util::sync::CancellationToken;

use super::config::WorkflowSet;
use super::journal::Journal;
use super::rules::{Decided, Engine, OutboxEntry, Record, RunKey, RunOutcome};
use super::ticks::Ticks;
use crate::clock::Clock;
use crate::TaskmasterError;

/// How a [`FlowService`] runs.
#[derive(Debug, Clone)]
pub struct FlowOptions {
    /// Where workers publish done tasks.
    pub done_topic: String,
    /// The app's consumer group on the done topic.
    pub group: String,
    /// Where a copy of a phase's task goes when it fails for good (`None`: nowhere).
    pub failed_topic: Option<String>,
    /// The state directory (journals, last ticks, the lock).
    pub state: PathBuf,
    /// `true`: journal writes return once on disk (`fdatasync`), surviving a machine crash.
    pub fsync: bool,
    /// At most this many done tasks are decided, journaled and acked together.
    pub batch: usize,
    /// At most this many sends are in flight at once.
    pub send_concurrency: usize,
    /// How often the workflow files are checked for changes (`None`: never).
    pub reload_every: Option<Duration>,
    /// Journals of runs untouched for this long are deleted.
    pub keep: Duration,
    /// How late a cron tick may be handled and still count as on time.
    pub grace: Duration,
}

impl FlowOptions {
    /// Defaults with the state kept in `state`.
    pub fn new(state: impl Into<PathBuf>) -> Self {
        FlowOptions {
            done_topic: "done".to_owned(),
            group: "flow".to_owned(),
            failed_topic: Some("failed".to_owned()),
            state: state.into(),
            fsync: false,
            batch: 256,
            send_concurrency: 64,
            reload_every: Some(Duration::from_secs(10)),
            keep: Duration::from_secs(7 * 24 * 3600),
            grace: crate::cron::DEFAULT_GRACE,
        }
    }
}

/// How often old journals are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// `taskbus flow` as a library: workflows, a bus, a state directory and a clock.
#[derive(Debug)]
pub struct FlowService {
    bus: Bus,
    set: WorkflowSet,
    engine: Engine,
    journal: Journal,
    ticks: Ticks,
    clock: Arc<dyn Clock>,
    options: FlowOptions,
    /// When failed sends are tried again.
    send_retry: Option<(DateTime<Utc>, Duration)>,
    next_reload: Option<DateTime<Utc>>,
    next_prune: DateTime<Utc>,
}

impl FlowService {
    /// Opens the state directory (locking it: one app per directory) and rebuilds every run of the
    /// loaded workflows from its journal.
    pub fn new(
        bus: Bus,
        set: WorkflowSet,
        clock: Arc<dyn Clock>,
        options: FlowOptions,
    ) -> Result<Self, TaskmasterError> {
        let journal = Journal::open(&options.state, options.fsync)?;
        let mut ticks = Ticks::open(&options.state)?;
        ticks.set_grace(options.grace);
        let engine = Engine::new(set.workflows().cloned(), options.failed_topic.clone());
        let now = clock.now();
        let mut service = FlowService {
            bus,
            set,
            engine,
            journal,
            ticks,
            clock,
            next_reload: None,
            next_prune: now,
            send_retry: None,
            options,
        };
        for warning in service.set.warnings() {
            tracing::warn!("{warning}");
        }
        let names: Vec<String> = service
            .engine
            .workflows()
            .map(|w| w.name().to_owned())
            .collect();
        for name in names {
            service.restore_workflow(&name)?;
        }
        service.schedule_reload(now);
        Ok(service)
    }

    /// The engine, to look at runs.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Runs until `shutdown` (or until a finite done topic ends): tasks already decided are sent
    /// before it returns when the bus allows; the rest are sent by the next start.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TaskmasterError> {
        self.settle_in_doubt().await?;
        let options = ConsumerOptions::group(&self.options.group)
            .max_in_flight(self.options.batch.max(1) * 2);
        let sub = self
            .bus
            .subscribe_with(&self.options.done_topic, options)
            .await?;
        tracing::info!(topic = %self.options.done_topic, group = %self.options.group,
            workflows = self.engine.workflows().count(), state = %self.options.state.display(), "flow running");
        // The subscription is read in a task of its own that never abandons a `next()` half-way (a
        // claimed delivery dropped unsettled would come back only after its lease); the loop below
        // can then wait on timers and the channel freely.
        let (tx, mut rx) = tokio::sync::mpsc::channel(self.options.batch.max(1));
        let stop_reading = CancellationToken::new();
        let reader = tokio::spawn(read_done(sub, tx, stop_reading.clone()));
        let result = self.serve(&shutdown, &mut rx).await;
        stop_reading.cancel();
        drop(rx);
        let _ = reader.await;
        result?;
        let now = self.clock.now();
        self.flush(now).await?;
        self.housekeeping(now)?;
        tracing::info!("flow stopped");
        Ok(())
    }

    async fn serve(
        &mut self,
        shutdown: &CancellationToken,
        rx: &mut tokio::sync::mpsc::Receiver<Received>,
    ) -> Result<(), TaskmasterError> {
        loop {
            let now = self.clock.now();
            self.fire_ticks(now)?;
            self.flush(now).await?;
            self.housekeeping(now)?;
            let wake = self.next_wakeup(now);
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.clock.sleep_until(wake) => continue,
                first = rx.recv() => first,
            };
            let Some(first) = first else {
                tracing::info!("the done topic ended");
                return Ok(());
            };
            let mut batch = vec![first];
            while batch.len() < self.options.batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.handle(batch).await?;
        }
    }

    /// Decides each done task, writes the decisions, then acks the messages.
    async fn handle(&mut self, batch: Vec<Received>) -> Result<(), TaskmasterError> {
        let now = self.clock.now();
        let mut decided = Decided::new();
        for received in &batch {
            match self.engine.route(&received.task) {
                Ok(targets) => {
                    for target in targets {
                        self.ensure_loaded(&target.key)?;
                        decided.extend(self.engine.on_done(&target, &received.task, now));
                    }
                }
                Err(reason) => {
                    tracing::debug!(id = %received.task.id, kind = %received.task.kind_job(), %reason, "not a workflow's task");
                }
            }
        }
        self.journal.append(&decided)?;
        stream::iter(batch)
            .for_each_concurrent(64, |r| async move {
                if let Err(e) = r.ack().await {
                    tracing::warn!(error = %e, "cannot ack a done task; it will come again and be recognised");
                }
            })
            .await;
        Ok(())
    }

    /// Starts the runs of the cron ticks due.
    fn fire_ticks(&mut self, now: DateTime<Utc>) -> Result<(), TaskmasterError> {
        let ticks = self.ticks.due(now);
        if ticks.is_empty() {
            return Ok(());
        }
        let mut decided = Decided::new();
        for t in &ticks {
            let Some(w) = self.engine.workflow(&t.workflow).cloned() else {
                continue;
            };
            let key = self.engine.tick_key(&w, t.tick);
            self.ensure_loaded(&key)?;
            let out = self.engine.on_tick(&t.workflow, t.phase, t.tick, now);
            if !out.is_empty() {
                tracing::info!(workflow = %t.workflow, phase = %t.name, tick = %t.tick, run = %key.run, "cron tick starts the run");
            }
            decided.extend(out);
        }
        self.journal.append(&decided)?;
        self.ticks.handled(&ticks)
    }

    /// Sends every outbox entry that is due, then records them sent.
    async fn flush(&mut self, now: DateTime<Utc>) -> Result<(), TaskmasterError> {
        if self.send_retry.is_some_and(|(at, _)| now < at) {
            return Ok(());
        }
        let due: Vec<OutboxEntry> = self
            .engine
            .outbox()
            .filter(|e| e.due.is_none_or_before(now))
            .cloned()
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let bus = self.bus.clone();
        let results: Vec<(OutboxEntry, Result<(), taskbus_bus::BusError>)> = stream::iter(due)
            .map(|e| {
                let bus = bus.clone();
                async move {
                    let r = bus.send(&e.topic, &e.task).await;
                    (e, r)
                }
            })
            .buffer_unordered(self.options.send_concurrency.max(1))
            .collect()
            .await;
        let sent_at = self.clock.now();
        let mut decided = Decided::new();
        let mut failed = 0;
        for (e, r) in results {
            match r {
                Ok(()) => {
                    tracing::debug!(run = %e.key, phase = %e.phase, topic = %e.topic, id = %e.task.id, attempt = e.task.attempt(), "sent");
                    decided.extend(self.engine.sent(&e.key, e.n, sent_at));
                }
                Err(err) => {
                    failed += 1;
                    tracing::warn!(run = %e.key, phase = %e.phase, topic = %e.topic, error = %err, "cannot send; trying again");
                }
            }
        }
        self.journal.append(&decided)?;
        self.send_retry = if failed > 0 {
            let backoff = self
                .send_retry
                .map_or(Duration::from_millis(200), |(_, b)| {
                    (b * 2).min(Duration::from_secs(30))
                });
            Some((
                sent_at + chrono::Duration::from_std(backoff).unwrap_or_default(),
                backoff,
            ))
        } else {
            None
        };
        Ok(())
    }

    /// Tasks decided before a restart and not recorded sent may or may not be on the bus. Where the
    /// bus can be read from the start, look for them there (by their de-duplication key) and record
    /// those found as sent; the rest are sent as usual.
    async fn settle_in_doubt(&mut self) -> Result<(), TaskmasterError> {
        let now = self.clock.now();
        let doubtful: Vec<OutboxEntry> = self
            .engine
            .outbox()
            .filter(|e| e.due.is_none_or_before(now))
            .cloned()
            .collect();
        if doubtful.is_empty() {
            return Ok(());
        }
        let caps = self.bus.capabilities();
        if !(caps.replay && caps.end_of_input) {
            tracing::warn!(count = doubtful.len(),
                "tasks were being sent when the app stopped, and this bus cannot be searched for them: they are sent again (same ids), so a worker may see one twice");
            return Ok(());
        }
        let mut by_topic: HashMap<String, Vec<OutboxEntry>> = HashMap::new();
        for e in doubtful {
            by_topic.entry(e.topic.clone()).or_default().push(e);
        }
        let mut decided = Decided::new();
        for (topic, entries) in by_topic {
            let wanted: HashSet<String> =
                entries.iter().filter_map(|e| e.task.dedup_key()).collect();
            let found = scan_topic(&self.bus, &topic, &wanted).await?;
            for e in entries {
                if e.task.dedup_key().is_some_and(|k| found.contains(&k)) {
                    tracing::info!(run = %e.key, phase = %e.phase, %topic, id = %e.task.id,
                        "a task being sent when the app stopped is on the bus: not sent again");
                    decided.extend(self.engine.sent(&e.key, e.n, now));
                } else {
                    tracing::info!(run = %e.key, phase = %e.phase, %topic, id = %e.task.id,
                        "a task decided before the app stopped is not on the bus yet: sending it");
                }
            }
        }
        self.journal.append(&decided)
    }

    /// Makes sure a run that has a journal is in memory before deciding for it.
    fn ensure_loaded(&mut self, key: &RunKey) -> Result<(), TaskmasterError> {
        if self.engine.run(key).is_some() {
            return Ok(());
        }
        if let Some(file) = self.journal.load(key)? {
            match self.engine.restore(&file.records) {
                Ok((_, problems)) => {
                    for p in problems {
                        tracing::warn!(run = %key, "{p}");
                    }
                }
                Err(e) => {
                    tracing::warn!(run = %key, path = %file.path.display(), error = %e, "cannot restore the run");
                }
            }
        }
        Ok(())
    }

    /// Rebuilds every run of workflow `name` from the journals, keeping the unfinished ones in memory.
    fn restore_workflow(&mut self, name: &str) -> Result<(), TaskmasterError> {
        let (files, ended) = self.journal.load_workflow(name)?;
        let (mut active, mut finished) = (0, ended);
        for file in files {
            match self.engine.restore(&file.records) {
                Ok((key, problems)) => {
                    for p in problems {
                        tracing::warn!(run = %key, "{p}");
                    }
                    if self.engine.run(&key).is_some_and(|r| r.is_finished()) {
                        self.engine.evict(&key);
                        finished += 1;
                    } else {
                        active += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %file.path.display(), error = %e, "cannot restore the run");
                }
            }
        }
        if let Some(w) = self.engine.workflow(name).cloned() {
            self.ticks.set_workflow(&w, self.clock.now());
        }
        let _ = self.engine.take_changed();
        tracing::info!(workflow = %name, active, finished, "workflow loaded");
        Ok(())
    }

    /// Forgets finished runs, reloads changed workflows, prunes old journals.
    fn housekeeping(&mut self, now: DateTime<Utc>) -> Result<(), TaskmasterError> {
        for key in self.engine.take_changed() {
            let Some(run) = self.engine.run(&key) else {
                continue;
            };
            if !run.is_finished() {
                continue;
            }
            let took = (run.updated - run.started).to_std().unwrap_or_default();
            let outcome = run.outcome();
            match &outcome {
                RunOutcome::Completed => tracing::info!(run = %key, took = ?took, "run completed"),
                other => tracing::warn!(run = %key, took = ?took, "run {other}"),
            }
            let end = Record::End {
                at: now,
                outcome: outcome.to_string(),
            };
            self.journal.append(&[(key.clone(), end)])?;
            self.engine.evict(&key);
            self.journal.close(&key);
        }
        if self.next_reload.is_some_and(|t| now >= t) {
            self.reload()?;
            self.schedule_reload(now);
        }
        if now >= self.next_prune {
            let in_memory: HashSet<PathBuf> = self
                .engine
                .runs()
                .map(|r| Journal::path_of(&self.options.state, &r.key))
                .collect();
            let removed = self
                .journal
                .prune(self.options.keep, |p| in_memory.contains(p))?;
            if removed > 0 {
                tracing::info!(removed, keep = ?self.options.keep, "old run journals deleted");
            }
            self.next_prune = now + chrono::Duration::from_std(PRUNE_EVERY).unwrap_or_default();
        }
        Ok(())
    }

    fn reload(&mut self) -> Result<(), TaskmasterError> {
        let report = self.set.reload();
        for warning in &report.warnings {
            tracing::warn!("{warning}");
        }
        for (name, error) in &report.rejected {
            let kept = self.set.get(name).is_some();
            tracing::error!(workflow = %name, kept_last_good = kept, "workflow file rejected{}:\n{error}",
                if kept { "; the last good version stays in use" } else { "" });
        }
        for name in &report.removed {
            self.engine.retire_workflow(name);
            self.ticks.remove_workflow(name);
            tracing::warn!(workflow = %name,
                "workflow file removed: no new run starts from it; its runs in flight go on until the app restarts");
        }
        for w in report.changed {
            tracing::info!(workflow = %w.name(), phases = w.phases().len(), "workflow (re)loaded");
            self.engine.set_workflow(w.clone());
            self.restore_workflow(w.name())?;
        }
        Ok(())
    }

    fn schedule_reload(&mut self, now: DateTime<Utc>) {
        self.next_reload = self
            .options
            .reload_every
            .map(|d| now + chrono::Duration::from_std(d).unwrap_or_default());
    }

    fn next_wakeup(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let outbox = self.engine.outbox().filter_map(|e| e.due).min();
        let retry = self.send_retry.map(|(at, _)| at);
        [
            self.ticks.next_wakeup(),
            outbox,
            retry,
            self.next_reload,
            Some(self.next_prune),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + chrono::Duration::hours(1))
        .max(now)
    }
}

/// `due` is absent or not after `now`.
trait DueExt {
    fn is_none_or_before(&self, now: DateTime<Utc>) -> bool;
}

impl DueExt for Option<DateTime<Utc>> {
    fn is_none_or_before(&self, now: DateTime<Utc>) -> bool {
        self.map_or(true, |d| d <= now)
    }
}

/// Hands the done topic's tasks to the loop until stopped, the topic ends, or the loop is gone.
async fn read_done(
    mut sub: Subscription,
    tx: tokio::sync::mpsc::Sender<Received>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = sub.next() => next,
        };
        match next {
            Ok(Some(received)) => {
                if tx.send(received).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the done topic; trying again in 1s");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = sub.close().await;
}

/// Reads `topic` from its start in a group of its own and returns the de-duplication keys in
/// `wanted` that are there.
async fn scan_topic(
    bus: &Bus,
    topic: &str,
    wanted: &HashSet<String>,
) -> Result<HashSet<String>, TaskmasterError> {
    let group = format!(
        "flow-verify-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    tracing::info!(%topic, %group, looking_for = wanted.len(), "searching the topic for tasks sent just before the app stopped");
    let options = ConsumerOptions::group(&group)
        .finite(true)
        .max_in_flight(1024);
    let mut consumer = bus.consumer(topic, &options).await?;
    let mut found = HashSet::new();
    while let Some(delivery) = consumer.next().await? {
        if let Ok(task) = Task::from_json(&delivery.payload) {
            if let Some(k) = task.dedup_key().filter(|k| wanted.contains(k)) {
                found.insert(k);
            }
        }
        if let Err(e) = delivery.ack().await {
            tracing::debug!(error = %e, "cannot ack in the search group");
        }
    }
    let _ = consumer.close().await;
    Ok(found)
}
