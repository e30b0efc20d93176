//! What a run measures: the buses, the (N, C) points of each, and the parts to skip.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A bus the bench knows how to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BusKind {
    /// The in-process bus (no raw client, no worker process).
    Mem,
    /// The file bus, against plain file I/O.
    File,
    /// NATS JetStream, against async-nats.
    Nats,
    /// RabbitMQ, against lapin.
    Amqp,
    /// Kafka (tansu here), against rdkafka.
    Kafka,
}

impl BusKind {
    /// Every bus, in report order.
    pub(crate) const ALL: [BusKind; 5] = [
        BusKind::Mem,
        BusKind::File,
        BusKind::Nats,
        BusKind::Amqp,
        BusKind::Kafka,
    ];

    /// The name used in flags, tables and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BusKind::Mem => "mem",
            BusKind::File => "file",
            BusKind::Nats => "nats",
            BusKind::Amqp => "amqp",
            BusKind::Kafka => "kafka",
        }
    }

    /// The cargo feature the bus needs, if any.
    pub(crate) fn feature(self) -> Option<&'static str> {
        match self {
            BusKind::Mem | BusKind::File => None,
            BusKind::Nats => Some("nats"),
            BusKind::Amqp => Some("amqp"),
            BusKind::Kafka => Some("kafka"),
        }
    }

    /// True when this binary was built with the bus.
    pub(crate) fn built(self) -> bool {
        match self {
            BusKind::Mem | BusKind::File => true,
            BusKind::Nats => cfg!(feature = "nats"),
            BusKind::Amqp => cfg!(feature = "amqp"),
            BusKind::Kafka => cfg!(feature = "kafka"),
        }
    }

    /// The name of the broker's process (`/proc/PID/comm`), whose CPU time is measured when it runs
    /// on this machine.
    pub(crate) fn broker_process(self) -> Option<&'static str> {
        match self {
            BusKind::Mem | BusKind::File => None,
            BusKind::Nats => Some("nats-server"),
            BusKind::Amqp => Some("beam.smp"),
            BusKind::Kafka => Some("tansu"),
        }
    }

    /// True when there is a raw-client loop to compare with.
    pub(crate) fn has_raw(self) -> bool {
        self != BusKind::Mem
    }

    /// True when a worker in another process can share the bus (needed for the memory measure).
    pub(crate) fn shared_between_processes(self) -> bool {
        self != BusKind::Mem
    }

    /// The largest N of a default run: what finishes in a few minutes on two busy cores.
    pub(crate) fn default_limit(self) -> usize {
        match self {
            BusKind::Mem | BusKind::File => 1_000_000,
            BusKind::Nats | BusKind::Amqp | BusKind::Kafka => 100_000,
        }
    }
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A part of the run that `--skip` leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Part {
    /// The throughput matrix (every C at `--tasks`).
    Throughput,
    /// The cost-growth points (every N of `--growth` at `--growth-concurrency`).
    Growth,
    /// The raw-client loops.
    Raw,
    /// The send → done latency.
    Latency,
    /// The worker-process memory.
    Memory,
}

/// A number of tasks, written `2000`, `10k` or `1M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub(crate) struct Count(pub(crate) usize);

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (digits, scale) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1_000),
            Some((i, 'm' | 'M')) => (&t[..i], 1_000_000),
            _ => (t, 1),
        };
        let n: usize = digits
            .replace('_', "")
            .parse()
            .map_err(|_| format!("{s:?} is not a count of tasks; write it like 2000, 10k or 1M"))?;
        n.checked_mul(scale)
            .filter(|n| *n > 0)
            .map(Count)
            .ok_or_else(|| format!("{s:?} must be at least 1 and fit in memory; write it like 10k"))
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&short(self.0))
    }
}

/// `n` the short way: `1M`, `100k`, `2500`.
pub(crate) fn short(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// `BUS=N`: the largest N measured on a bus (`--limit nats=1M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) bus: BusKind,
    pub(crate) n: usize,
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (bus, n) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not BUS=N; write it like nats=1M"))?;
        let bus = BusKind::ALL
            .into_iter()
            .find(|b| b.name() == bus.trim())
            .ok_or_else(|| {
                format!("unknown bus {bus:?} in {s:?}; use mem, file, nats, amqp or kafka")
            })?;
        Ok(Limit {
            bus,
            n: n.parse::<Count>()?.0,
        })
    }
}

/// One measurement point: N tasks, C in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct Point {
    /// Tasks.
    pub(crate) n: usize,
    /// Tasks in flight (the launcher's `max_in_progress`, the raw loop's prefetch and in-flight bound).
    pub(crate) c: usize,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N={} C={}", short(self.n), self.c)
    }
}

/// The sizes of a run, the same for every bus except for each bus's limit on N.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    /// The buses, in report order.
    pub(crate) buses: Vec<BusKind>,
    /// C of the throughput matrix.
    pub(crate) concurrency: Vec<usize>,
    /// N of the throughput matrix (at C, at most `per_slot` × C).
    pub(crate) tasks: usize,
    /// At most this many tasks per slot in the throughput matrix, so C=1 stays short.
    pub(crate) per_slot: usize,
    /// N of the cost-growth points.
    pub(crate) growth: Vec<usize>,
    /// C of the cost-growth points and of the worker process whose memory is measured under load.
    pub(crate) growth_concurrency: usize,
    /// The largest N per bus.
    pub(crate) limits: Vec<(BusKind, usize)>,
    /// Repetitions of each throughput point (the median is reported).
    pub(crate) runs: usize,
    /// Tasks sent per second in the latency measure.
    pub(crate) latency_rate: f64,
    /// Tasks of the latency measure.
    pub(crate) latency_tasks: usize,
    /// C of the worker in the latency measure.
    pub(crate) latency_concurrency: usize,
    /// Tasks held in flight at once by the worker process of the memory measure (the large step; the
    /// small step is a tenth of it).
    pub(crate) memory_in_flight: usize,
    /// What is left out.
    pub(crate) skip: Vec<Part>,
}

impl Plan {
    /// True unless `--skip` names `part`.
    pub(crate) fn does(&self, part: Part) -> bool {
        !self.skip.contains(&part)
    }

    /// The largest N measured on `bus`.
    pub(crate) fn limit(&self, bus: BusKind) -> usize {
        self.limits
            .iter()
            .rev()
            .find(|(b, _)| *b == bus)
            .map_or_else(|| bus.default_limit(), |(_, n)| *n)
    }

    /// The throughput points of `bus`: the matrix, then the growth points not already in it.
    pub(crate) fn throughput_points(&self, bus: BusKind) -> Vec<Point> {
        let limit = self.limit(bus);
        let mut points = Vec::new();
        if self.does(Part::Throughput) {
            for &c in &self.concurrency {
                let n = self.tasks.min(self.per_slot.saturating_mul(c)).min(limit);
                points.push(Point { n, c });
            }
        }
        if self.does(Part::Growth) {
            points.extend(self.growth_sizes(bus).into_iter().map(|n| Point {
                n,
                c: self.growth_concurrency,
            }));
        }
        let mut seen = Vec::new();
        points.retain(|p| {
            let new = !seen.contains(p);
            seen.push(*p);
            new
        });
        points
    }

    /// The growth sizes measured on `bus` (those within its limit).
    pub(crate) fn growth_sizes(&self, bus: BusKind) -> Vec<usize> {
        let limit = self.limit(bus);
        let mut sizes: Vec<usize> = self
            .growth
            .iter()
            .copied()
            .filter(|n| *n <= limit)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The in-flight steps of the memory measure: a tenth of `memory_in_flight`, then all of it.
    pub(crate) fn memory_steps(&self) -> (usize, usize) {
        let large = self.memory_in_flight.max(2);
        ((large / 10).max(1), large)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            buses: vec![BusKind::Nats],
            concurrency: vec![1, 16, 64],
            tasks: 10_000,
            per_slot: 2_000,
            growth: vec![10_000, 100_000, 1_000_000],
            growth_concurrency: 64,
            limits: vec![(BusKind::Nats, 100_000)],
            runs: 1,
            latency_rate: 100.0,
            latency_tasks: 500,
            latency_concurrency: 16,
            memory_in_flight: 1000,
            skip: Vec::new(),
        }
    }

    #[test]
    fn counts_take_suffixes() {
        assert_eq!("10k".parse::<Count>(), Ok(Count(10_000)));
        assert_eq!("1M".parse::<Count>(), Ok(Count(1_000_000)));
        assert_eq!("2_500".parse::<Count>(), Ok(Count(2_500)));
        assert!("0".parse::<Count>().is_err());
        assert!("ten".parse::<Count>().is_err());
        assert_eq!(Count(100_000).to_string(), "100k");
        assert_eq!(short(2_500), "2500");
    }

    #[test]
    fn limits_name_a_bus() {
        let limit: Limit = "kafka=1M".parse().unwrap();
        assert_eq!((limit.bus, limit.n), (BusKind::Kafka, 1_000_000));
        assert!("redis=1M".parse::<Limit>().is_err());
        assert!("nats".parse::<Limit>().is_err());
    }

    #[test]
    fn points_are_the_matrix_then_new_growth_sizes_within_the_limit() {
        let points = plan().throughput_points(BusKind::Nats);
        let pairs: Vec<(usize, usize)> = points.iter().map(|p| (p.n, p.c)).collect();
        assert_eq!(
            pairs,
            [(2_000, 1), (10_000, 16), (10_000, 64), (100_000, 64)]
        );
        assert_eq!(plan().limit(BusKind::File), 1_000_000);
    }
}
