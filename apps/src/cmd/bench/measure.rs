//! What every measure shares: the timing of a drain, the machine's load, percentiles, and a process's
//! memory from /proc.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One drain of N pre-filled tasks by one loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    /// How long filling the topic took (N sends, confirmed).
    pub(crate) fill: Duration,
    /// From the first task received to the last done task confirmed.
    pub(crate) drain: Duration,
    /// Tasks received more than once.
    pub(crate) duplicates: u64,
    /// CPU time spent while draining, by this process and by the broker.
    pub(crate) cpu: Cpu,
}

/// CPU time (user + system) spent by this process (the loop, its client library's threads) and by
/// the broker's processes on this machine.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// This process.
    pub(crate) client: Duration,
    /// The broker's processes, when the bus has a broker and it runs here.
    pub(crate) broker: Option<Duration>,
}

/// Where a measure of CPU time started. This process's time is read to the nanosecond; the broker's
/// from /proc, in clock ticks of 10 ms (a drain of a second reads to within about 1%).
#[derive(Debug)]
pub(crate) struct CpuClock {
    /// The broker's process name (`/proc/PID/comm`).
    broker: Option<&'static str>,
    start: Cpu,
}

/// Clock ticks per second in /proc (`USER_HZ`, 100 on every Linux architecture).
const TICKS_PER_SEC: u64 = 100;

impl CpuClock {
    /// Starts counting this process and the processes named `broker`.
    pub(crate) fn start(broker: Option<&'static str>) -> CpuClock {
        CpuClock {
            broker,
            start: Self::read(broker),
        }
    }

    /// The CPU time spent since [`start`](Self::start).
    pub(crate) fn stop(&self) -> Cpu {
        let now = Self::read(self.broker);
        Cpu {
            client: now.client.saturating_sub(self.start.client),
            broker: now
                .broker
                .zip(self.start.broker)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }

    fn read(broker: Option<&str>) -> Cpu {
        Cpu {
            client: own_cpu(),
            broker: broker.and_then(processes_cpu),
        }
    }
}

/// The CPU time of this process, every thread counted, those that ended too.
#[allow(unsafe_code)]
fn own_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` through the pointer, which points to `t`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return process_cpu("/proc/self/stat").unwrap_or_default();
    }
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// The CPU time of every process named `comm` (`None` when there is none).
fn processes_cpu(comm: &str) -> Option<Duration> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        let named = std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == comm);
        if let Some(cpu) = named.then(|| process_cpu(dir.join("stat"))).flatten() {
            total = Some(total.unwrap_or(Duration::ZERO) + cpu);
        }
    }
    total
}

/// utime + stime of the process whose `/proc/PID/stat` is at `path`.
fn process_cpu(path: impl AsRef<std::path::Path>) -> Option<Duration> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat(text: &str) -> Option<Duration> {
    // The name (field 2) is in parentheses and may hold spaces: count fields after its `)`.
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

/// Microseconds of `cpu` per task (0 for no tasks).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn per_task_us(cpu: Duration, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1e6 / n as f64
}

/// The moment a loop received its first task: the drain is timed from there, so connecting and
/// joining a consumer group (seconds on Kafka) count for neither loop.
#[derive(Debug, Default)]
pub(crate) struct FirstSeen(OnceLock<Instant>);

impl FirstSeen {
    /// Notes now as the first receipt, unless there was one.
    pub(crate) fn mark(&self) {
        let _ = self.0.set(Instant::now());
    }

    /// The first receipt, if any.
    pub(crate) fn get(&self) -> Option<Instant> {
        self.0.get().copied()
    }

    /// Time from the first receipt to now (zero when nothing was received).
    pub(crate) fn elapsed(&self) -> Duration {
        self.get().map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// The load averages over 1, 5 and 15 minutes (zeros where /proc/loadavg cannot be read).
pub(crate) fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
        values.next().unwrap_or(0.0),
    ]
}

/// Tasks per second.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn rate(n: usize, d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The `q`-quantile (0..=1) of sorted `values`, nearest rank.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (0 when empty).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Resident memory of a process, from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rss {
    /// `VmRSS`: resident now.
    pub(crate) now_kib: u64,
    /// `VmHWM`: the peak so far.
    pub(crate) peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of process `pid`.
pub(crate) fn rss(pid: u32) -> anyhow::Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!("cannot read {path} (is the worker process still running?): {e}")
    })?;
    parse_status(&text).ok_or_else(|| anyhow::anyhow!("{path} has no VmRSS and VmHWM lines"))
}

fn parse_status(text: &str) -> Option<Rss> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
    };
    Some(Rss {
        now_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
    }

    #[test]
    fn reads_cpu_time_from_proc() {
        let sample = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0";
        assert_eq!(parse_stat(sample), Some(Duration::from_millis(2800)));
        assert!(process_cpu("/proc/self/stat").is_some());
        let before = own_cpu();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(0);
        }
        assert!(own_cpu() > before, "a busy loop takes CPU time");
        let clock = CpuClock::start(Some("no-such-broker"));
        let spent = clock.stop();
        assert!(spent.broker.is_none(), "no process has that name");
        assert!((per_task_us(Duration::from_millis(10), 1000) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process_memory() {
        let me = rss(std::process::id()).unwrap();
        assert!(me.now_kib > 0 && me.peak_kib >= me.now_kib);
        let sample = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(
            parse_status(sample),
            Some(Rss {
                now_kib: 1024,
                peak_kib: 2048
            })
        );
    }
}
