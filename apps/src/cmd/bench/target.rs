//! One bus under test: its URL, the unique names of this run, and cleaning up what the run made.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Context as _;
use taskbus_bus::{Bus, ConsumerOptions};

use super::plan::BusKind;

/// Where the brokers are, as the tests find them.
#[derive(Debug, Clone)]
pub(crate) struct Brokers {
    /// `nats://HOST:PORT`.
    pub(crate) nats: String,
    /// `amqp://USER:PASS@HOST:PORT/VHOST`.
    pub(crate) amqp: String,
    /// `kafka://HOST:PORT`.
    pub(crate) kafka: String,
    /// The directory under which the file bus of a run is made.
    pub(crate) dir: PathBuf,
}

/// A bus under test for one run.
#[derive(Debug)]
pub(crate) struct Target {
    /// Which bus.
    pub(crate) kind: BusKind,
    /// The URL the taskbus loops connect with.
    pub(crate) url: String,
    /// The brokers, for the raw clients.
    #[cfg_attr(
        not(any(feature = "nats", feature = "amqp", feature = "kafka")),
        allow(dead_code)
    )]
    pub(crate) brokers: Brokers,
    /// `tbbench-<minutes since the epoch>-<pid>`: in every name this run makes.
    pub(crate) run_id: String,
    /// The file bus directory of this run (file bus only).
    pub(crate) dir: Option<PathBuf>,
    next: AtomicUsize,
    /// Topics of the bus and the groups used on them, for the cleanup.
    topics: Mutex<Vec<(String, Vec<String>)>>,
    /// Queues or topics made by a raw client, for the cleanup.
    raw: Mutex<Vec<String>>,
}

impl Target {
    /// A target for `kind` in run `run_id`; nothing is contacted yet.
    pub(crate) fn new(kind: BusKind, brokers: &Brokers, run_id: &str) -> Target {
        let dir = (kind == BusKind::File).then(|| brokers.dir.join(run_id));
        let url = match kind {
            BusKind::Mem => format!("mem:{run_id}"),
            BusKind::File => format!(
                "file://{}",
                dir.as_deref().unwrap_or(Path::new(".")).display()
            ),
            // Streams of this run hold their messages an hour at most, should the cleanup not run.
            BusKind::Nats => with_options(&brokers.nats, "max_age=1h"),
            // An exchange of its own, so every queue of the run is named after the run.
            BusKind::Amqp => with_options(&brokers.amqp, &format!("exchange={run_id}")),
            BusKind::Kafka => brokers.kafka.clone(),
        };
        Target {
            kind,
            url,
            brokers: brokers.clone(),
            run_id: run_id.to_owned(),
            dir,
            next: AtomicUsize::new(0),
            topics: Mutex::new(Vec::new()),
            raw: Mutex::new(Vec::new()),
        }
    }

    /// Connects to the bus, saying how to start it when it cannot be reached.
    pub(crate) async fn connect(&self) -> anyhow::Result<Bus> {
        Bus::connect(&self.url)
            .await
            .with_context(|| match self.kind {
                BusKind::Mem | BusKind::File => format!("{}: cannot open the bus", self.kind),
                kind => format!(
                "{kind}: cannot reach the broker; start it with `bash scripts/brokers/{kind}.sh` \
                 (as the tests do), or point --{kind}-url at yours"
            ),
            })
    }

    /// A new topic name of this run, used by `groups` (remembered for the cleanup).
    pub(crate) fn topic(&self, label: &str, groups: &[&str]) -> String {
        let topic = format!(
            "{}-{label}{}",
            self.run_id,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        lock(&self.topics).push((
            topic.clone(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
        ));
        topic
    }

    /// A new name for a raw client's queue, stream or topic (remembered for the cleanup).
    pub(crate) fn raw_name(&self, label: &str) -> String {
        let name = format!(
            "{}-raw-{label}{}",
            self.run_id,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        lock(&self.raw).push(name.clone());
        name
    }

    /// Makes sure `group` exists on `topic` before anything is sent to it, on buses where a group
    /// created later would not see earlier messages (AMQP).
    pub(crate) async fn declare_group(
        &self,
        bus: &Bus,
        topic: &str,
        group: &str,
    ) -> anyhow::Result<()> {
        if bus.capabilities().replay {
            return Ok(());
        }
        let mut consumer = bus
            .consumer(topic, &ConsumerOptions::group(group))
            .await
            .with_context(|| {
                format!("{}: cannot declare group {group:?} on {topic:?}", self.kind)
            })?;
        consumer.close().await?;
        Ok(())
    }

    /// Deletes what this run made on the bus: the file bus directory, the run's streams, queues,
    /// exchange or topics.
    pub(crate) async fn cleanup(&self) -> anyhow::Result<()> {
        let topics = std::mem::take(&mut *lock(&self.topics));
        let raw = std::mem::take(&mut *lock(&self.raw));
        match self.kind {
            BusKind::Mem => Ok(()),
            BusKind::File => match &self.dir {
                Some(dir) if dir.exists() => std::fs::remove_dir_all(dir).with_context(|| {
                    format!("cannot remove the bench directory {}", dir.display())
                }),
                _ => Ok(()),
            },
            #[cfg(feature = "nats")]
            BusKind::Nats => {
                super::raw_nats::delete_streams(&self.brokers.nats, &self.run_id).await
            }
            #[cfg(feature = "amqp")]
            BusKind::Amqp => {
                let mut queues = raw;
                for (topic, groups) in topics {
                    queues.extend(
                        groups
                            .iter()
                            .map(|g| format!("{}:{topic}:{g}", self.run_id)),
                    );
                    queues.push(format!("{}:{topic}:(backlog)", self.run_id));
                }
                super::raw_amqp::delete(&self.brokers.amqp, &queues, &self.run_id).await
            }
            #[cfg(feature = "kafka")]
            BusKind::Kafka => {
                let mut all = raw;
                all.extend(topics.into_iter().map(|(topic, _)| topic));
                super::raw_kafka::delete_topics(&self.brokers.kafka, &all).await
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = (topics, raw);
                Ok(())
            }
        }
    }
}

/// `url` with `options` (`a=1&b=2`) added to its query.
pub(crate) fn with_options(url: &str, options: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{options}")
}

/// `tbbench-<minutes since the epoch>-<pid>`: unique per run, and old runs' leftovers tell their age.
pub(crate) fn run_id() -> String {
    format!("tbbench-{}-{}", minutes_now(), std::process::id())
}

/// Minutes since the Unix epoch.
pub(crate) fn minutes_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// True for a name made by a bench run that started more than two hours ago (a run that could not
/// clean up after itself).
#[cfg_attr(not(any(feature = "nats", feature = "kafka")), allow(dead_code))]
pub(crate) fn is_stale(name: &str) -> bool {
    let Some(at) = name.find("tbbench-") else {
        return false;
    };
    let minute = name[at + "tbbench-".len()..]
        .split('-')
        .next()
        .and_then(|m| m.parse::<u64>().ok());
    minute.is_some_and(|m| m + 120 < minutes_now())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_run_and_stale_ones_are_told_by_age() {
        let id = run_id();
        let brokers = Brokers {
            nats: "nats://127.0.0.1:4222".into(),
            amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            kafka: "kafka://127.0.0.1:9092".into(),
            dir: PathBuf::from("/tmp"),
        };
        let target = Target::new(BusKind::Amqp, &brokers, &id);
        assert!(target.url.ends_with(&format!("?exchange={id}")));
        let topic = target.topic("in", &["bench"]);
        assert!(topic.starts_with(&id));
        taskbus_bus::check_name("topic", &topic).unwrap();
        assert!(!is_stale(&format!("taskbus-{topic}")));
        assert!(is_stale("taskbus-tbbench-1000-42-in0"));
        assert!(!is_stale("taskbus-orders"));
        let file = Target::new(BusKind::File, &brokers, &id);
        assert_eq!(file.url, format!("file:///tmp/{id}"));
    }
}
