//! Fixtures: a bus of each kind, helpers to send tasks, run a launcher and read done tasks, and a
//! backend wrapper that counts lease extensions and fails publishes on demand.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use taskbus_bus::{
    Acker, Backend, Bus, BusError, Capabilities, Consumer, ConsumerOptions, Delivery, Outgoing,
    Task,
};
use taskbus_worker::{Launcher, LauncherOptions, Report, Worker};

/// A bus for one test: a fresh `mem:` broker or a fresh `file://` directory.
pub(crate) struct Fixture {
    pub(crate) bus: Bus,
    /// Kept so the directory lives as long as the bus.
    _dir: Option<tempfile::TempDir>,
}

static FIXTURES: AtomicU64 = AtomicU64::new(0);

impl Fixture {
    pub(crate) async fn mem() -> Fixture {
        let n = FIXTURES.fetch_add(1, Ordering::Relaxed);
        let url = format!("mem:worker-test-{}-{n}", std::process::id());
        Fixture::connect(url, None).await
    }

    pub(crate) async fn file() -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("file://{}?lease=5s", dir.path().display());
        Fixture::connect(url, Some(dir)).await
    }

    async fn connect(url: String, dir: Option<tempfile::TempDir>) -> Fixture {
        let bus = Bus::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Fixture { bus, _dir: dir }
    }

    pub(crate) async fn send(&self, topic: &str, tasks: &[Task]) {
        self.bus
            .send_all(topic, tasks, 64)
            .await
            .expect("tasks sent");
    }

    /// Every task on `topic` now.
    pub(crate) async fn read(&self, topic: &str) -> Vec<Task> {
        taskbus_worker::testing::read_all(&self.bus, topic)
            .await
            .expect("topic read")
    }

    /// Runs a finite launcher without signal handling on `topic`.
    pub(crate) async fn run(
        &self,
        topic: &str,
        options: LauncherOptions,
        worker: impl Worker,
    ) -> Report {
        let options = options.finite(true).handle_signals(false);
        within(
            60,
            Launcher::new(self.bus.clone(), topic, options).run(worker),
        )
        .await
        .expect("the launcher runs")
    }
}

/// `n` tasks of `kind` with info `0`, `1`, …
pub(crate) fn tasks(kind: &str, n: usize) -> Vec<Task> {
    (0..n).map(|i| Task::new(kind, i.to_string())).collect()
}

/// Awaits `f`, failing the test if it takes more than `secs` seconds (a hang, not a speed check).
pub(crate) async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("still running after {secs}s: hung"))
}

/// The done task answering `input`.
pub(crate) fn done_for<'a>(done: &'a [Task], input: &Task) -> &'a Task {
    let mut found = done.iter().filter(|d| d.id == input.id);
    let first = found
        .next()
        .unwrap_or_else(|| panic!("no done task for {}", input.id));
    assert!(found.next().is_none(), "two done tasks for {}", input.id);
    first
}

/// Runs each test body on every bus: `on_every_bus! { async fn name(fx) { … } }`.
macro_rules! on_every_bus {
    ($(async fn $name:ident($fx:ident) $body:block)*) => {
        mod mem {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $fx = &crate::util::Fixture::mem().await;
                    $body
                }
            )*
        }
        mod file {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $fx = &crate::util::Fixture::file().await;
                    $body
                }
            )*
        }
    };
}
pub(crate) use on_every_bus;

/// Faults and counters around a real backend.
#[derive(Default)]
pub(crate) struct Faults {
    /// Publishes to this topic fail while `fail_sends` is above 0 (each failure counts it down).
    pub(crate) fail_topic: String,
    pub(crate) fail_sends: AtomicU32,
    /// Lease extensions asked for.
    pub(crate) in_progress_calls: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) nacks: AtomicU64,
}

/// A bus over `inner`'s backend with `faults`.
pub(crate) fn faulty(inner: &Bus, faults: Arc<Faults>) -> Bus {
    let backend = Arc::new(FaultyBackend {
        inner: Arc::clone(inner.backend()),
        faults,
    });
    Bus::from_backend(backend, inner.options().clone(), inner.url())
}

struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        if topic == self.faults.fail_topic {
            let left = self.faults.fail_sends.load(Ordering::SeqCst);
            if left > 0 {
                self.faults.fail_sends.store(left - 1, Ordering::SeqCst);
                return Err(BusError::broker(
                    format!("publish to topic {topic:?}"),
                    "injected failure",
                ));
            }
        }
        self.inner.send(topic, message).await
    }

    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let inner = self.inner.consumer(topic, options).await?;
        Ok(Box::new(FaultyConsumer {
            inner,
            faults: Arc::clone(&self.faults),
        }))
    }

    async fn close(&self) -> Result<(), BusError> {
        self.inner.close().await
    }
}

struct FaultyConsumer {
    inner: Box<dyn Consumer>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Consumer for FaultyConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        let Some(d) = self.inner.next().await? else {
            return Ok(None);
        };
        let (topic, payload, count) = (d.topic().to_owned(), d.payload.clone(), d.delivery_count());
        let acker = CountingAcker {
            inner: d,
            faults: Arc::clone(&self.faults),
        };
        Ok(Some(Delivery::new(topic, payload, count, Box::new(acker))))
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.inner.close().await
    }
}

struct CountingAcker {
    inner: Delivery,
    faults: Arc<Faults>,
}

#[async_trait]
impl Acker for CountingAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.faults.acks.fetch_add(1, Ordering::SeqCst);
        self.inner.ack().await
    }

    async fn nack(self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        self.faults.nacks.fetch_add(1, Ordering::SeqCst);
        self.inner.nack(delay).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.faults.in_progress_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.in_progress().await
    }
}
