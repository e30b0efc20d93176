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
