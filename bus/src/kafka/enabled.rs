//! `kafka://HOST:PORT[,HOST:PORT…]` — Kafka, through librdkafka (bundled).
//!
//! ```text
//! kafka://127.0.0.1:9092
//! kafka://k1:9092,k2:9092,k3:9092?partitions=12&replication=3&session_timeout=30s
//! kafka://USER:PASSWORD@k1:9092?rdkafka.security.protocol=sasl_ssl
//! ```
//!
//! A port left out is 9092. `USER:PASSWORD@` (percent-encoded) turns on SASL/PLAIN over plaintext;
//! change the protocol or mechanism with the `rdkafka.` options below. Passwords belong there rather
//! than in `rdkafka.sasl.password`, because error messages and logs print the URL with the user
//! info's password removed.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `partitions` | `3` | partitions of the topics this bus creates (more partitions, more members of a group can work at once) |
//! | `replication` | `-1` | replication factor of the topics it creates; `-1` is the cluster's default |
//! | `session_timeout` | `10s` | how long a member that stopped heartbeating (a crashed worker) keeps its partitions; its unfinished messages then go to another member |
//! | `rebalance_wait` | `30s` | how long a rebalance waits for a handed-out message of a partition being taken away; `in_progress` renews this lease, up to 4/5 of librdkafka's `max.poll.interval.ms` (the larger of 300 s and twice `rebalance_wait`) |
//! | `join_wait` | `session_timeout` | how long opening a consumer waits for the group to assign it partitions (`0s`: not at all) |
//! | `commit_interval` | `1s` | how often finished offsets are committed (`auto.commit.interval.ms`) |
//! | `linger` | `5ms` | how long the producer waits to batch messages (`linger.ms`) |
//! | `compression` | `none` | `none`, `gzip`, `snappy`, `lz4` or `zstd` |
//! | `send_timeout` | `30s` | how long a send may wait for its delivery report before failing |
//! | `connect_timeout` | `10s` | how long connecting (and creating a topic) waits for the brokers |
//! | `client_id` | `taskbus` | the `client.id` brokers see |
//! | `group_per_topic` | `true` | the Kafka group id is `GROUP.TOPIC`, so one group name used on several topics (the default `workers`) makes separate Kafka groups whose rebalances do not hold each other up; `false` uses `GROUP` as it is |
//! | `rdkafka.KEY` | | any librdkafka setting, passed as it is and winning over the above (`rdkafka.security.protocol=ssl`, `rdkafka.ssl.ca.location=…`, `rdkafka.fetch.wait.max.ms=50`) |
//!
//! ## How the delivery contract maps onto Kafka
//!
//! - **Send** uses the idempotent producer (`acks=all`, no duplicates from retries) and returns
//!   when the delivery report arrives; concurrent sends are batched and pipelined. The task id is the
//!   message key, so the messages of one key keep their order in one partition.
//! - **Topics** are created through the admin API with `partitions` and `replication` when a send
//!   or a consumer first needs them (brokers need not auto-create topics).
//! - **Groups** are Kafka consumer groups. A new group starts at the earliest message (replay).
//!   Opening a consumer waits (up to `join_wait`) until the group has assigned it partitions, so
//!   members opened one after the other have settled their rebalances before work arrives.
//! - **Ack.** Kafka commits one offset per partition: "everything below is done". Messages finish
//!   out of order, so each partition's offset is committed only up to the lowest message not yet
//!   acked, and a slow message holds the commit back while later ones finish. After a crash, the
//!   group resumes from there: the slow message comes again, and so may later ones that were acked
//!   but lay above it (at least once).
//! - **Nack** publishes a copy of the message to the same topic (same key) with headers naming the
//!   group (other groups skip it), the delivery count and, for a delay, a not-before time the
//!   consuming member honours by holding the copy back; then the original counts as done. A held-back
//!   copy holds its partition's commit back, so keep nack delays short (seconds to minutes) and
//!   leave long waits to the retry taskmaster. A delivery dropped without ack or nack is nacked the
//!   same way in the background.
//! - **Redelivery limit.** The delivery count travels in the copy's headers, so the subscription
//!   dead-letters a message nacked too often. A delivery cut short by a crashed process is not
//!   counted (Kafka keeps no per-message state): it comes back with the count it had.
//! - **Leases.** A member's session is its lease: a crashed member's partitions move to the others
//!   after `session_timeout`, and they resume from the committed offsets. While the member lives,
//!   its messages are not handed to anyone else; when a rebalance takes a partition away, the
//!   member first waits for the messages it handed out from it (each for `rebalance_wait`, renewed
//!   by `in_progress`), then commits what is done.
//! - **Flow.** Each assigned partition gets a librdkafka queue of its own; a member takes messages
//!   from them only while the application holds fewer than `max_in_flight`, and the rest wait,
//!   prefetched, in librdkafka (no pause and resume, which would throw prefetched data away).
//! - **Threads.** Each consumer has a poll thread: Kafka drops a member that stops polling, and
//!   rebalances are served while polling, so the member polls whether or not the application asks
//!   for messages.
//! - **Finite consumers** end once every partition assigned to them is read to its end and every
//!   message handed out is settled.
//! - **Ordering** holds per key (per partition), not across a topic of several partitions.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use super::consumer::KafkaConsumer;
use super::context::PumpContext;
use super::producer::Producer;
use super::pump::Pump;
use super::settings::Settings;
use super::state::Shared;
use crate::config::BusUrl;
use crate::{Backend, BusError, Capabilities, Consumer, ConsumerOptions, Outgoing};

pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    let settings = Settings::from_url(url)?;
    // Options are all taken now: report a misspelt one before trying the network.
    url.finish()?;
    let producer = Producer::new(settings, url.redacted())?;
    producer.check().await?;
    Ok(Arc::new(KafkaBackend {
        producer: Arc::new(producer),
        consumers: Mutex::new(Vec::new()),
    }))
}

/// One connection to a Kafka cluster: a producer shared by every send and nack, and a poll thread
/// per consumer.
struct KafkaBackend {
    producer: Arc<Producer>,
    consumers: Mutex<Vec<(Arc<Shared>, JoinHandle<()>)>>,
}

impl KafkaBackend {
    fn group_id(&self, group: &str, topic: &str) -> String {
        if self.producer.settings.group_per_topic {
            format!("{group}.{topic}")
        } else {
            group.to_owned()
        }
    }

    fn consumers(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<Shared>, JoinHandle<()>)>> {
        self.consumers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered: false,
            ..Capabilities::ALL
        }
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        let key = message.key.as_deref().map(str::as_bytes);
        self.producer
            .send(topic, key, &message.payload, None)
            .await
            .map(|_| ())
    }

    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.producer.ensure_topic(topic).await?;
        let settings = &self.producer.settings;
        let shared = Arc::new(Shared::new(
            topic,
            &options.group,
            settings.rebalance_wait,
            settings.rebalance_cap(),
        ));
        let group_id = self.group_id(&options.group, topic);
        let op = || {
            format!(
                "consume topic {topic:?} in group {group_id:?} from {}",
                self.producer.url
            )
        };
        let mut consumer: BaseConsumer<PumpContext> = settings
            .consumer(&group_id, options.finite)
            .create_with_context(PumpContext::new(shared.clone()))
            .map_err(|e| BusError::broker(op(), e))?;
        let waker = shared.clone();
        consumer.set_nonempty_callback(move || waker.wake());
        let consumer = Arc::new(consumer);
        consumer.context().attach(&consumer);
        consumer
            .subscribe(&[topic])
            .map_err(|e| BusError::broker(op(), e))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pump = Pump::new(
            consumer,
            shared.clone(),
            tx,
            options.max_in_flight,
            options.finite,
        );
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{topic}"))
            .spawn(move || pump.run())
            .map_err(|e| BusError::broker(op(), format!("cannot start its poll thread: {e}")))?;
        {
            let mut consumers = self.consumers();
            consumers.retain(|(_, t)| !t.is_finished());
            consumers.push((shared.clone(), thread));
        }
        let consumer = KafkaConsumer::new(shared.clone(), rx, self.producer.clone());
        joined(&shared, settings.join_wait).await;
        Ok(Box::new(consumer))
    }

    async fn close(&self) -> Result<(), BusError> {
        let consumers = std::mem::take(&mut *self.consumers());
        for (shared, _) in &consumers {
            shared.lock().shutdown = true;
            shared.notify();
        }
        let joined = tokio::task::spawn_blocking(move || {
            for (_, thread) in consumers {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
        self.producer.flush(Duration::from_secs(30)).await
    }
}

/// Waits until the group assigned partitions to the consumer (it may get none, when the group has
/// more members than the topic partitions), or `limit` passed. Then a send right after subscribing
/// finds the consumer a member, and the group does not rebalance under the first messages.
async fn joined(shared: &Shared, limit: Duration) {
    let started = std::time::Instant::now();
    loop {
        let assigned = shared.lock().assigned;
        if assigned || started.elapsed() >= limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
