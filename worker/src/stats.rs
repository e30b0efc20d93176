//! [`Stats`]: what a launcher has done, as counters, a task-time histogram and the running tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use taskbus_bus::TaskResult;

use crate::TaskContext;

/// Live statistics of one launcher, shared with its HTTP endpoints. Cheap to read at any time with
/// [`Stats::snapshot`].
#[derive(Debug)]
pub struct Stats {
    since: Instant,
    state: AtomicU8,
    pub(crate) consumed: AtomicU64,
    pub(crate) running: AtomicU64,
    results: [AtomicU64; 4],
    pub(crate) rejected: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) interrupted: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) ack_failures: AtomicU64,
    times: Histogram,
    running_tasks: Mutex<HashMap<u64, RunningEntry>>,
    next_slot: AtomicU64,
}

#[derive(Debug)]
struct RunningEntry {
    id: String,
    kind: String,
    since: Instant,
    ctx: TaskContext,
}

/// Where a launcher is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Fetching and running tasks.
    Running,
    /// No longer fetching; waiting for running tasks.
    Draining,
    /// Returned.
    Stopped,
}

/// A point-in-time copy of [`Stats`], as served on `/stats`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Where the launcher is in its life.
    pub state: State,
    /// Seconds since the launcher was made.
    pub uptime_secs: f64,
    /// Tasks received from the bus (every type).
    pub consumed: u64,
    /// Tasks whose worker is running now.
    pub running: u64,
    /// Done tasks published and confirmed, by result.
    pub done: DoneCounts,
    /// Tasks of another type answered with a `rejected` done task.
    pub rejected: u64,
    /// Tasks of another type left for other consumers.
    pub ignored: u64,
    /// Tasks not run because their deadline had passed.
    pub expired: u64,
    /// Tasks stopped by their timeout.
    pub timed_out: u64,
    /// Tasks whose worker panicked.
    pub panicked: u64,
    /// Tasks cut off by a shutdown and answered with an `interrupted` done task.
    pub interrupted: u64,
    /// Tasks cut off by a shutdown and handed back to the bus to be redone.
    pub redelivered: u64,
    /// Done tasks that could not be published (their inputs were nacked, to come back).
    pub publish_failures: u64,
    /// Inputs whose ack failed after their done task was published (they may be done again).
    pub ack_failures: u64,
    /// How long workers took (`started` to `ended`).
    pub task_time: TaskTime,
    /// The tasks running now, longest first (at most 100).
    pub running_tasks: Vec<RunningTask>,
}

/// Done tasks by result.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DoneCounts {
    /// `complete`.
    pub complete: u64,
    /// `error`.
    pub error: u64,
    /// `warn`.
    pub warn: u64,
    /// `alert`.
    pub alert: u64,
}

impl DoneCounts {
    /// All done tasks.
    pub fn total(&self) -> u64 {
        self.complete + self.error + self.warn + self.alert
    }

    /// The count for `result`.
    pub fn get(&self, result: TaskResult) -> u64 {
        match result {
            TaskResult::Complete => self.complete,
            TaskResult::Error => self.error,
            TaskResult::Warn => self.warn,
            TaskResult::Alert => self.alert,
        }
    }
}

/// Task-time statistics, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TaskTime {
    /// Tasks measured.
    pub count: u64,
    /// The mean.
    pub mean_ms: f64,
    /// The median (within about 5%).
    pub p50_ms: f64,
    /// The 99th percentile (within about 5%).
    pub p99_ms: f64,
    /// The longest.
    pub max_ms: f64,
}

/// One running task, as listed on `/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct RunningTask {
    /// The task id.
    pub id: String,
    /// The task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds since it started.
    pub running_secs: f64,
    /// The last progress its worker reported.
    pub progress: Option<String>,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            since: Instant::now(),
            state: AtomicU8::new(0),
            consumed: AtomicU64::new(0),
            running: AtomicU64::new(0),
            results: Default::default(),
            rejected: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            ack_failures: AtomicU64::new(0),
            times: Histogram::new(),
            running_tasks: Mutex::new(HashMap::new()),
            next_slot: AtomicU64::new(0),
        }
    }

    /// Where the launcher is in its life.
    pub fn state(&self) -> State {
        match self.state.load(Relaxed) {
            0 => State::Running,
            1 => State::Draining,
            _ => State::Stopped,
        }
    }

    pub(crate) fn set_state(&self, state: State) {
        self.state.store(state as u8, Relaxed);
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_done(&self, result: TaskResult) {
        let i = TaskResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.results[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn record_time(&self, d: Duration) {
        self.times.record(d);
    }

    /// Registers a running task; the returned slot removes it when dropped.
    pub(crate) fn start_task(&self, id: &str, kind: &str, ctx: &TaskContext) -> RunningSlot<'_> {
        let slot = self.next_slot.fetch_add(1, Relaxed);
        let entry = RunningEntry {
            id: id.to_owned(),
            kind: kind.to_owned(),
            since: Instant::now(),
            ctx: ctx.clone(),
        };
        self.running_map().insert(slot, entry);
        self.running.fetch_add(1, Relaxed);
        RunningSlot { stats: self, slot }
    }

    fn running_map(&self) -> MutexGuard<'_, HashMap<u64, RunningEntry>> {
        self.running_tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the statistics now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |i: usize| self.results[i].load(Relaxed);
        StatsSnapshot {
            state: self.state(),
            uptime_secs: self.since.elapsed().as_secs_f64(),
            consumed: self.consumed.load(Relaxed),
            running: self.running.load(Relaxed),
            done: DoneCounts {
                complete: r(0),
                error: r(1),
                warn: r(2),
                alert: r(3),
            },
            rejected: self.rejected.load(Relaxed),
            ignored: self.ignored.load(Relaxed),
            expired: self.expired.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            interrupted: self.interrupted.load(Relaxed),
            redelivered: self.redelivered.load(Relaxed),
            publish_failures: self.publish_failures.load(Relaxed),
            ack_failures: self.ack_failures.load(Relaxed),
            task_time: self.times.summary(),
            running_tasks: self.running_list(),
        }
    }

    fn running_list(&self) -> Vec<RunningTask> {
        let mut list: Vec<(Instant, RunningTask)> = self
            .running_map()
            .values()
            .map(|e| {
                let task = RunningTask {
                    id: e.id.clone(),
                    kind: e.kind.clone(),
                    running_secs: e.since.elapsed().as_secs_f64(),
                    progress: e.ctx.current_progress(),
                };
                (e.since, task)
            })
            .collect();
        list.sort_by_key(|(since, _)| *since);
        list.into_iter().take(100).map(|(_, t)| t).collect()
    }
}

/// Removes a running task from [`Stats`] when dropped.
pub(crate) struct RunningSlot<'a> {
    stats: &'a Stats,
    slot: u64,
}

impl Drop for RunningSlot<'_> {
    fn drop(&mut self) {
        self.stats.running_map().remove(&self.slot);
        self.stats.running.fetch_sub(1, Relaxed);
    }
}

/// A lock-free histogram of durations: 16 buckets per doubling of microseconds (about 4% wide).
#[derive(Debug)]
struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

const PER_OCTAVE: f64 = 16.0;
const BUCKETS: usize = 16 * 42;

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    fn index(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((us as f64).log2() * PER_OCTAVE) as usize;
        i.min(BUCKETS - 1)
    }

    /// The middle of bucket `i`, in microseconds.
    fn value(i: usize) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let exp = (i as f64 + 0.5) / PER_OCTAVE;
        exp.exp2()
    }

    fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    fn quantile(&self, q: f64, count: u64) -> f64 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return Self::value(i);
            }
        }
        0.0
    }

    #[allow(clippy::cast_precision_loss)]
    fn summary(&self) -> TaskTime {
        let count = self.count.load(Relaxed);
        if count == 0 {
            return TaskTime::default();
        }
        let max = self.max_us.load(Relaxed) as f64;
        TaskTime {
            count,
            mean_ms: self.sum_us.load(Relaxed) as f64 / count as f64 / 1000.0,
            p50_ms: self.quantile(0.5, count).min(max) / 1000.0,
            p99_ms: self.quantile(0.99, count).min(max) / 1000.0,
            max_ms: max / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let h = Histogram::new();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.mean_ms - 500.5).abs() < 0.01, "{s:?}");
        assert!((s.p50_ms - 500.0).abs() / 500.0 < 0.05, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() / 990.0 < 0.05, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 0.01, "{s:?}");
    }
}
