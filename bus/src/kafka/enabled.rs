//! The Kafka backend itself: connecting, and the [`Backend`] that sends and opens consumers.

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
