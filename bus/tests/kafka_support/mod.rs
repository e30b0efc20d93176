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

/// The conformance harness: one shared broker, `LEASE` as the session timeout.
pub struct KafkaHarness {
    url: String,
    caps: Capabilities,
}

impl KafkaHarness {
    /// A harness on the shared broker; fails (never skips) when it cannot be reached.
    pub async fn shared() -> KafkaHarness {
        let url = test_url(&base_url(), "");
        let bus = connect(&url).await;
        let caps = bus.capabilities();
        let _ = bus.close().await;
        KafkaHarness { url, caps }
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
        Err(
            "the test broker is tansu with memory storage, which keeps nothing across a restart \
             (see scripts/brokers/kafka.sh)"
                .to_owned(),
        )
    }
}
