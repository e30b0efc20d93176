//! The results of a run, as JSON (every figure with its bus, N and C) and as markdown tables.

use std::fmt::Write as _;

use serde::Serialize;

use super::plan::{short, BusKind, Plan, Point};

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The taskbus version measured.
    pub(crate) taskbus_version: &'static str,
    /// How the bench was called.
    pub(crate) command: String,
    /// When the run started (RFC 3339, UTC).
    pub(crate) started: String,
    /// How long the run took.
    pub(crate) seconds: f64,
    /// The machine.
    pub(crate) host: Host,
    /// The sizes asked for.
    pub(crate) plan: Plan,
    /// Drain rates, taskbus and raw client.
    pub(crate) throughput: Vec<Throughput>,
    /// Send → done latencies.
    pub(crate) latency: Vec<Latency>,
    /// Worker-process memory.
    pub(crate) memory: Vec<Memory>,
    /// Bytes of resident memory per task held in flight.
    pub(crate) memory_per_in_flight: Vec<PerInFlight>,
    /// What could not be measured, and why.
    pub(crate) failures: Vec<Failure>,
}

/// The machine the run measured on: the load says how much else ran.
#[derive(Debug, Serialize)]
pub(crate) struct Host {
    /// CPUs available.
    pub(crate) cpus: usize,
    /// Load averages (1, 5, 15 minutes) when the run started.
    pub(crate) load_at_start: [f64; 3],
    /// Load averages when it ended.
    pub(crate) load_at_end: [f64; 3],
}

/// Who drained the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Client {
    /// A no-op worker through the taskbus Launcher.
    Taskbus,
    /// The hand-written loop on the broker's own client.
    Raw,
}

/// One throughput point of one client.
#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    /// The bus.
    pub(crate) bus: BusKind,
    /// Tasks drained.
    pub(crate) n: usize,
    /// Tasks in flight.
    pub(crate) c: usize,
    /// Who drained them.
    pub(crate) client: Client,
    /// Median drain rate over the runs, from the first task received to the last done task confirmed.
    pub(crate) tasks_per_sec: f64,
    /// The drain rate of each run.
    pub(crate) runs: Vec<f64>,
    /// Median rate of filling the topic (confirmed sends, 1024 in flight).
    pub(crate) fill_tasks_per_sec: f64,
    /// Tasks received more than once (summed over the runs).
    pub(crate) duplicates: u64,
    /// CPU time of this process (the loop and its client library) per task while draining, µs
    /// (median over the runs).
    pub(crate) client_cpu_us: f64,
    /// CPU time of the broker's processes per task while draining, µs; absent without a broker on
    /// this machine.
    pub(crate) broker_cpu_us: Option<f64>,
    /// The 1-minute load average when the point started.
    pub(crate) load: f64,
}

/// One latency measure.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    /// The bus.
    pub(crate) bus: BusKind,
    /// Tasks timed.
    pub(crate) n: usize,
    /// The worker's `max_in_progress`.
    pub(crate) c: usize,
    /// The send rate asked for (tasks/s).
    pub(crate) rate: f64,
    /// The send rate achieved.
    pub(crate) achieved_rate: f64,
    /// Median send → done, ms.
    pub(crate) p50_ms: f64,
    /// 90th percentile, ms.
    pub(crate) p90_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// The slowest, ms.
    pub(crate) max_ms: f64,
    /// The 1-minute load average when the measure started.
    pub(crate) load: f64,
}

/// What a worker process was doing when its memory was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// Connected and subscribed after one task; nothing to do (N = 1).
    Idle,
    /// Just drained N more tasks (peak = the highest so far).
    Drained,
    /// Holding N tasks in flight at once.
    InFlight,
}

/// The memory of a worker process at one moment.
#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    /// The bus.
    pub(crate) bus: BusKind,
    /// What it was doing.
    pub(crate) phase: Phase,
    /// Tasks drained (drained), held (in flight), or 1 (idle).
    pub(crate) n: usize,
    /// The worker's `max_in_progress`.
    pub(crate) c: usize,
    /// `VmRSS`, KiB.
    pub(crate) rss_kib: u64,
    /// `VmHWM` (the peak so far), KiB.
    pub(crate) peak_kib: u64,
}

/// Resident bytes per task held in flight.
#[derive(Debug, Serialize)]
pub(crate) struct PerInFlight {
    /// The bus.
    pub(crate) bus: BusKind,
    /// The worker's `max_in_progress`.
    pub(crate) c: usize,
    /// Tasks held at the first reading.
    pub(crate) from_n: usize,
    /// Tasks held at the second reading.
    pub(crate) to_n: usize,
    /// (RSS at `to_n` − RSS at `from_n`) / (`to_n` − `from_n`).
    pub(crate) bytes: f64,
}

/// A measure that failed.
#[derive(Debug, Serialize)]
pub(crate) struct Failure {
    /// The bus.
    pub(crate) bus: BusKind,
    /// Which measure.
    pub(crate) what: String,
    /// The error, with its causes.
    pub(crate) error: String,
}

impl Report {
    /// The taskbus/raw ratio of every point measured both ways: (bus, point, taskbus rate, raw rate).
    pub(crate) fn ratios(&self) -> Vec<(BusKind, Point, f64, f64)> {
        self.throughput
            .iter()
            .filter(|t| t.client == Client::Taskbus)
            .filter_map(|t| {
                let raw = self.row(t.bus, t.n, t.c, Client::Raw)?;
                Some((
                    t.bus,
                    Point { n: t.n, c: t.c },
                    t.tasks_per_sec,
                    raw.tasks_per_sec,
                ))
            })
            .collect()
    }

    /// The point where taskbus is furthest below its raw client.
    pub(crate) fn slowest_ratio(&self) -> Option<(BusKind, Point, f64)> {
        self.ratios()
            .into_iter()
            .filter(|(_, _, _, raw)| *raw > 0.0)
            .map(|(bus, point, ours, raw)| (bus, point, ours / raw))
            .min_by(|a, b| a.2.total_cmp(&b.2))
    }

    /// The report as markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        self.header(&mut out);
        self.throughput_table(&mut out);
        self.cpu_table(&mut out);
        self.latency_table(&mut out);
        self.memory_tables(&mut out);
        if !self.failures.is_empty() {
            out.push_str("\n## Failures\n\n");
            for f in &self.failures {
                let _ = writeln!(
                    out,
                    "- {} {}: {}",
                    f.bus,
                    f.what,
                    f.error.replace('\n', " ")
                );
            }
        }
        out
    }

    fn header(&self, out: &mut String) {
        let [l1, l5, l15] = self.host.load_at_start;
        let end = self.host.load_at_end[0];
        let _ = writeln!(out, "# taskbus bench\n");
        let _ = writeln!(
            out,
            "taskbus {}, {}, {} CPUs; load average at start {l1:.1} / {l5:.1} / {l15:.1} (1/5/15 min), \
             at end {end:.1}; took {:.0} s.\n",
            self.taskbus_version, self.started, self.host.cpus, self.seconds
        );
        let _ = writeln!(out, "`{}`", self.command);
    }

    fn throughput_table(&self, out: &mut String) {
        if self.throughput.is_empty() {
            return;
        }
        out.push_str(
            "\n## Throughput\n\nA no-op worker drains N pre-filled tasks of ~250 bytes: tasks/s from the first \
             task received to the last done task confirmed (the input acked after it). C: tasks in flight \
             (the launcher's max_in_progress; the raw loop's prefetch and concurrency). Fill: confirmed \
             sends, 1024 in flight. Load: the 1-minute load average when the point started.\n\n",
        );
        out.push_str(
            "| bus | N | C | taskbus tasks/s | raw client tasks/s | taskbus / raw | fill tasks/s (taskbus / raw) | load |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for (bus, n, c) in self.points() {
            let find = |client| self.row(bus, n, c, client);
            let (ours, raw) = (find(Client::Taskbus), find(Client::Raw));
            let rate =
                |t: Option<&Throughput>| t.map_or("–".to_owned(), |t| thousands(t.tasks_per_sec));
            let fill = |t: Option<&Throughput>| {
                t.map_or("–".to_owned(), |t| thousands(t.fill_tasks_per_sec))
            };
            let ratio = match (ours, raw) {
                (Some(o), Some(r)) if r.tasks_per_sec > 0.0 => {
                    format!("{:.2}", o.tasks_per_sec / r.tasks_per_sec)
                }
                _ => "–".to_owned(),
            };
            let load = ours.or(raw).map_or(0.0, |t| t.load);
            let _ = writeln!(
                out,
                "| {bus} | {} | {c} | {} | {} | {ratio} | {} / {} | {load:.1} |",
                short(n),
                rate(ours),
                rate(raw),
                fill(ours),
                fill(raw),
            );
        }
        if let Some((bus, point, ratio)) = self.slowest_ratio() {
            let _ = writeln!(
                out,
                "\nSlowest against its raw client: **{bus} {point}**, taskbus at {ratio:.2} of the raw loop."
            );
        }
    }

    fn cpu_table(&self, out: &mut String) {
        if self.throughput.is_empty() {
            return;
        }
        out.push_str(
            "\n## CPU per task\n\nWhere the time goes: CPU time (user + system) per task while \
             draining, of the process running the loop (every thread, its client library's too) and of the \
             broker's processes on this machine (from /proc, in 10 ms ticks), µs. Client and broker share \
             the machine's cores.\n\n\
             | bus | N | C | taskbus client | taskbus broker | raw client | raw broker |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (bus, n, c) in self.points() {
            let find = |client| self.row(bus, n, c, client);
            let us = |x: Option<f64>| x.map_or("–".to_owned(), |x| format!("{x:.1}"));
            let (ours, raw) = (find(Client::Taskbus), find(Client::Raw));
            let _ = writeln!(
                out,
                "| {bus} | {} | {c} | {} | {} | {} | {} |",
                short(n),
                us(ours.map(|t| t.client_cpu_us)),
                us(ours.and_then(|t| t.broker_cpu_us)),
                us(raw.map(|t| t.client_cpu_us)),
                us(raw.and_then(|t| t.broker_cpu_us)),
            );
        }
    }

    /// The throughput row of one point and client.
    fn row(&self, bus: BusKind, n: usize, c: usize, client: Client) -> Option<&Throughput> {
        self.throughput
            .iter()
            .find(|t| (t.bus, t.n, t.c, t.client) == (bus, n, c, client))
    }

    /// The (bus, N, C) of every throughput point, in the order measured.
    fn points(&self) -> Vec<(BusKind, usize, usize)> {
        let mut points: Vec<(BusKind, usize, usize)> =
            self.throughput.iter().map(|t| (t.bus, t.n, t.c)).collect();
        points.dedup();
        points
    }

    fn latency_table(&self, out: &mut String) {
        if self.latency.is_empty() {
            return;
        }
        out.push_str(
            "\n## Latency\n\nOne task at a time at a fixed rate into a running worker: from just before `send` \
             to the done task reaching a consumer of the done topic.\n\n\
             | bus | N | C | rate (tasks/s) | p50 ms | p90 ms | p99 ms | max ms | load |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for l in &self.latency {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
                l.bus,
                short(l.n),
                l.c,
                l.achieved_rate,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                l.load
            );
        }
    }

    fn memory_tables(&self, out: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        out.push_str(
            "\n## Memory of a worker process\n\nA no-op worker in its own process; VmRSS and VmHWM (peak) \
             from /proc. Idle: connected and subscribed after one task. Drained: after N more tasks. \
             In flight: while holding N tasks at once.\n\n\
             | bus | phase | N | C | RSS | peak RSS |\n|---|---|---:|---:|---:|---:|\n",
        );
        for m in &self.memory {
            let phase = match m.phase {
                Phase::Idle => "idle",
                Phase::Drained => "drained",
                Phase::InFlight => "in flight",
            };
            let _ = writeln!(
                out,
                "| {} | {phase} | {} | {} | {} | {} |",
                m.bus,
                short(m.n),
                m.c,
                mib(m.rss_kib),
                mib(m.peak_kib)
            );
        }
        if !self.memory_per_in_flight.is_empty() {
            out.push_str(
                "\n| bus | C | in flight | bytes per in-flight task |\n|---|---:|---:|---:|\n",
            );
            for p in &self.memory_per_in_flight {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} → {} | {} |",
                    p.bus,
                    p.c,
                    short(p.from_n),
                    short(p.to_n),
                    thousands(p.bytes)
                );
            }
        }
    }
}

/// `12345.6` as `12,346`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn thousands(x: f64) -> String {
    let rounded = x.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    if rounded < 0 {
        out.insert(0, '-');
    }
    out
}

/// KiB as MB with one decimal.
#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.6), "1,000");
        assert_eq!(thousands(-2048.0), "-2,048");
        assert_eq!(mib(10_240), "10.0 MiB");
    }
}
