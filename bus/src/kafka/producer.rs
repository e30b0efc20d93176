//! Publishing: the idempotent producer, and topics created through the admin API when missing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::logs::Logs;
use super::settings::Settings;
use crate::BusError;

/// The producer and admin client one Kafka bus shares between sends, nacks and consumers.
pub(super) struct Producer {
    producer: Arc<FutureProducer<Logs>>,
    admin: AdminClient<Logs>,
    pub(super) settings: Settings,
    /// The URL (passwords removed), for errors.
    pub(super) url: String,
    /// Topics known to exist.
    known: Mutex<HashSet<String>>,
}

impl Producer {
    /// Creates the clients (librdkafka connects lazily; [`Producer::check`] proves the brokers answer).
    pub(super) fn new(settings: Settings, url: String) -> Result<Producer, BusError> {
        let client_error = |what: &str, e: KafkaError| {
            BusError::url(
                &url,
                format!("librdkafka rejected the {what} configuration: {e}"),
            )
        };
        let producer = settings
            .producer()
            .create_with_context(Logs)
            .map_err(|e| client_error("producer", e))?;
        let admin = settings
            .admin()
            .create_with_context(Logs)
            .map_err(|e| client_error("admin client", e))?;
        Ok(Producer {
            producer: Arc::new(producer),
            admin,
            settings,
            url,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Fails unless a broker answers a metadata request within the connect timeout.
    pub(super) async fn check(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let timeout = self.settings.connect_timeout;
        let answer = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| BusError::broker("the Kafka metadata request", e))?;
        match answer {
            Ok(_) => Ok(()),
            Err(e) => Err(self.unreachable(&e)),
        }
    }

    /// The error for brokers that do not answer.
    pub(super) fn unreachable(&self, e: &KafkaError) -> BusError {
        BusError::Connect {
            url: self.url.clone(),
            reason: format!(
                "no broker of {} answered within {:?}: {e}",
                self.settings.brokers, self.settings.connect_timeout
            ),
            hint: "is the Kafka broker running and reachable? Start one (for the tests, \
                   scripts/brokers/kafka.sh starts tansu on 127.0.0.1:9092) or point the URL at \
                   your brokers; raise connect_timeout= for slow networks"
                .to_owned(),
        }
    }

    /// Creates `topic` with the configured partitions and replication unless it exists.
    pub(super) async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        if self.lock_known().contains(topic) {
            return Ok(());
        }
        let s = &self.settings;
        let new = NewTopic::new(topic, s.partitions, TopicReplication::Fixed(s.replication));
        let options = AdminOptions::new()
            .request_timeout(Some(Timeout::After(s.connect_timeout)))
            .operation_timeout(Some(Timeout::After(s.connect_timeout)));
        let op = || format!("create topic {topic:?} on {}", self.url);
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| BusError::broker(op(), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    if !self.exists(topic).await {
                        return Err(BusError::broker(
                            op(),
                            format!(
                                "{code}; create it yourself (partitions={}, replication={}) or \
                                 allow this client to create topics",
                                s.partitions, s.replication
                            ),
                        ));
                    }
                }
            }
        }
        self.lock_known().insert(topic.to_owned());
        Ok(())
    }

    /// Whether the brokers know `topic` (for clients not allowed to create topics).
    async fn exists(&self, topic: &str) -> bool {
        let producer = self.producer.clone();
        let (topic, timeout) = (topic.to_owned(), self.settings.connect_timeout);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.name() == topic && t.error().is_none())
                })
        })
        .await
        .unwrap_or(false)
    }

    /// Publishes one message and waits for its delivery report. Returns its partition and offset.
    pub(super) async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(i32, i64), BusError> {
        self.ensure_topic(topic).await?;
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        match self
            .producer
            .send(record, Timeout::After(self.settings.send_timeout))
            .await
        {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((e, _)) => Err(self.send_error(topic, &e)),
        }
    }

    fn send_error(&self, topic: &str, e: &KafkaError) -> BusError {
        let op = format!("publish to topic {topic:?} on {}", self.url);
        let timed_out = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::QueueFull)
        );
        if timed_out {
            BusError::broker(
                op,
                format!(
                    "{e}: no broker confirmed it within send_timeout={:?}; is the broker up?",
                    self.settings.send_timeout
                ),
            )
        } else {
            BusError::broker(op, e)
        }
    }

    /// Waits up to `timeout` for every message sent to be confirmed.
    pub(super) async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| BusError::broker("flush the Kafka producer", e))?;
        flushed
            .map_err(|e| BusError::broker(format!("flush the Kafka producer of {}", self.url), e))
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}
