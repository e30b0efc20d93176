//! What the Kafka tests share: the broker URL, unique names, raw rdkafka helpers, and the
//! conformance harness.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use taskbus_bus::conformance::Harness;
use taskbus_bus::{Bus, Capabilities};

/// The broker of the tests: `TASKBUS_TEST_KAFKA_URL`, else the local tansu that
/// scripts/brokers/kafka.sh starts.
pub fn base_url() -> String {
    std::env::var("TASKBUS_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".to_owned())
}

/// The session timeout (the lease of a crashed member) the tests configure: Kafka brokers accept
/// 6 s and more by default.
pub const LEASE: Duration = Duration::from_secs(6);

/// One message per record batch, for tansu 0.6.0's memory storage: it answers a fetch that starts
/// inside a record batch with the batches after it only (the rest of that batch is skipped), and
/// reports the last batch's base offset + 1 as the high watermark. A group that resumes from an
/// offset committed inside a batch would lose messages. Real Kafka has neither bug.
pub const TANSU_WORKAROUND: &str = "rdkafka.batch.num.messages=1";

/// `base` with the test options (a short session timeout, [`TANSU_WORKAROUND`] unless
/// `TASKBUS_TEST_KAFKA_URL` names another broker) and `extra` ones.
pub fn test_url(base: &str, extra: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{sep}session_timeout={}ms", LEASE.as_millis());
    if std::env::var_os("TASKBUS_TEST_KAFKA_URL").is_none() {
        url.push('&');
        url.push_str(TANSU_WORKAROUND);
    }
    if !extra.is_empty() {
        url.push('&');
        url.push_str(extra);
    }
    url
}

/// `base` with the test session timeout and `extra` options, batching as usual (for measurements:
/// one message per batch costs tansu most of its throughput; a new group reading a topic from its
/// start never starts inside a batch).
pub fn batched_url(base: &str, extra: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{sep}session_timeout={}ms", LEASE.as_millis());
    if !extra.is_empty() {
        url.push('&');
        url.push_str(extra);
    }
    url
}

/// Logs to stderr when `RUST_LOG` is set (`RUST_LOG=taskbus_bus=debug,librdkafka=info`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Connects to `url`, failing the test (never skipping it) with the bus's own message.
pub async fn connect(url: &str) -> Bus {
    init_logs();
    match Bus::connect(url).await {
        Ok(bus) => bus,
        Err(e) => panic!(
            "cannot reach the Kafka test broker: {e}\n(run scripts/brokers/kafka.sh, or set \
             TASKBUS_TEST_KAFKA_URL to use another)"
        ),
    }
}

/// A name no other test or run uses.
pub fn unique(label: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000_000)
            .unwrap_or(0),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `HOST:PORT,…` of a `kafka://` URL, for raw rdkafka clients.
pub fn bootstrap(url: &str) -> String {
    let rest = url.trim_start_matches("kafka://");
    let hosts = rest.split(['?', '/']).next().unwrap_or(rest);
    hosts.rsplit('@').next().unwrap_or(hosts).to_owned()
}

/// The offset Kafka holds committed for `group_id` on `topic`/`partition` (`None`: nothing yet).
pub fn committed(url: &str, group_id: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap(url))
        .set("group.id", group_id)
        .create()
        .expect("a raw consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let offset = {
        let list = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("the committed offsets");
        let offset = list.find_partition(topic, partition).map(|e| e.offset());
        // The list must go before its consumer (a kept list makes the consumer's drop hang).
        drop(list);
        offset
    };
    match offset {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

/// The conformance harness: the shared broker, or a private tansu it can restart; `LEASE` as the
/// session timeout.
pub struct KafkaHarness {
    url: String,
    caps: Capabilities,
    private: Option<PrivateTansu>,
}

impl KafkaHarness {
    /// A harness on a private tansu with SQLite storage, for the broker-restart case. When none can
    /// start (a tansu without SQLite storage), the harness uses the shared broker and the restart
    /// case says why it is skipped.
    pub async fn private() -> KafkaHarness {
        match PrivateTansu::start() {
            Ok(tansu) => {
                // tansu 0.6 with SQLite storage answers every produce of an idempotent producer
                // with UNKNOWN_SERVER_ERROR once it restarted (its producer state does not survive
                // the restart): the restart case runs with a plain producer.
                let url = batched_url(&tansu.url(), "rdkafka.enable.idempotence=false");
                let bus = connect(&url).await;
                let caps = bus.capabilities();
                let _ = bus.close().await;
                KafkaHarness {
                    url,
                    caps,
                    private: Some(tansu),
                }
            }
            Err(reason) => {
                eprintln!("no private tansu: {reason}");
                KafkaHarness::shared().await
            }
        }
    }

    /// A harness on the shared broker; fails (never skips) when it cannot be reached.
    pub async fn shared() -> KafkaHarness {
        let url = test_url(&base_url(), "");
        let bus = connect(&url).await;
        let caps = bus.capabilities();
        let _ = bus.close().await;
        KafkaHarness {
            url,
            caps,
            private: None,
        }
    }
}

#[async_trait]
impl Harness for KafkaHarness {
    async fn connect(&self) -> Bus {
        connect(&self.url).await
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn lease(&self) -> Duration {
        LEASE
    }

    fn settle(&self) -> Duration {
        // Long enough for a second copy to arrive through a fetch and a rebalance.
        Duration::from_millis(1500)
    }

    async fn restart_broker(&self) -> Result<(), String> {
        match &self.private {
            Some(tansu) => tokio::task::block_in_place(|| tansu.restart()),
            None => Err(
                "the shared test broker is tansu with memory storage, which keeps nothing \
                         across a restart, and no tansu with SQLite storage could start"
                    .to_owned(),
            ),
        }
    }
}

/// The tansu binary: `TASKBUS_TANSU`, else the one scripts/brokers/kafka.sh installs.
pub fn tansu_binary() -> std::path::PathBuf {
    match std::env::var_os("TASKBUS_TANSU") {
        Some(path) => path.into(),
        None => {
            let home = std::env::var_os("CARGO_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo"))
                })
                .unwrap_or_default();
            home.join("bin").join("tansu")
        }
    }
}

/// A tansu of the test's own on a free port, storing in SQLite in a temporary directory (so it
/// keeps its data across a restart, unlike the memory storage of the shared broker). Stopped and
/// removed on drop.
pub struct PrivateTansu {
    port: u16,
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl PrivateTansu {
    /// Starts one. `Err` says why it cannot (no tansu, or one built without SQLite storage).
    pub fn start() -> Result<PrivateTansu, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let tansu = PrivateTansu {
            port,
            dir,
            child: std::sync::Mutex::new(None),
        };
        tansu.spawn()?;
        Ok(tansu)
    }

    /// `kafka://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn spawn(&self) -> Result<(), String> {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| format!("cannot open tansu's log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let binary = tansu_binary();
        let mut child = std::process::Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            // A path relative to the working directory: the temporary directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (run scripts/brokers/kafka.sh)",
                    binary.display()
                )
            })?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(
                    if log.contains("libsql") || log.contains("FeatureNotEnabled") {
                        format!(
                        "{} was built without SQLite storage; reinstall it with `cargo install \
                         tansu@0.6.0 --locked --features dynostore,libsql` ({tail})",
                        binary.display()
                    )
                    } else {
                        format!("tansu exited ({status}): {tail}")
                    },
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err("tansu did not listen within 20 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Stops tansu (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops tansu and starts it again on the same port and data.
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
