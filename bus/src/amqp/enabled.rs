//! The AMQP backend: connecting, sending, opening consumers (see the module docs for the mapping).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::{mpsc, oneshot};

use super::consume::AmqpConsumer;
use super::link::Link;
use super::options::AmqpOptions;
use super::publish::Publisher;
use super::settle::Settle;
use crate::config::BusUrl;
use crate::{Backend, BusError, Capabilities, Consumer, ConsumerOptions, Outgoing};

/// How long closing the bus waits for acks to be written.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the AMQP options from `url`, connects (publishing and consuming connections) and checks
/// that the exchange can be declared.
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    let options = Arc::new(AmqpOptions::from_url(url)?);
    // Unknown options are reported before a connection is tried.
    url.finish()?;
    let publish = Arc::new(Link::open(options.clone(), "publish").await?);
    let consume = Arc::new(Link::open(options.clone(), "consume").await?);
    let publisher = Publisher::new(publish);
    publisher.open().await?;
    Ok(Arc::new(AmqpBackend {
        shared: Arc::new(Shared {
            options,
            publisher,
            consume,
            settlers: Mutex::default(),
        }),
    }))
}

/// What the backend, its consumers and their ackers share.
pub(crate) struct Shared {
    pub(crate) options: Arc<AmqpOptions>,
    pub(crate) publisher: Publisher,
    pub(crate) consume: Arc<Link>,
    /// The settlers of consumer channels, flushed before the bus closes.
    settlers: Mutex<Vec<mpsc::WeakUnboundedSender<Settle>>>,
}

impl Shared {
    /// Remembers a settler, to flush it before the bus closes.
    pub(crate) fn track_settler(&self, settler: &mpsc::UnboundedSender<Settle>) {
        let mut settlers = self.settlers.lock().unwrap_or_else(|e| e.into_inner());
        settlers.retain(|s| s.strong_count() > 0);
        settlers.push(settler.downgrade());
    }

    /// Waits (a few seconds at most) until every ack handed to a settler is written.
    async fn flush_settlers(&self) {
        let settlers: Vec<_> = {
            let settlers = self.settlers.lock().unwrap_or_else(|e| e.into_inner());
            settlers
                .iter()
                .filter_map(mpsc::WeakUnboundedSender::upgrade)
                .collect()
        };
        let flushed = settlers.into_iter().filter_map(|settler| {
            let (done, flushed) = oneshot::channel();
            settler.send(Settle::Flush(done)).ok().map(|()| flushed)
        });
        let all = futures::future::join_all(flushed);
        if tokio::time::timeout(FLUSH_TIMEOUT, all).await.is_err() {
            tracing::warn!("acks not written within {FLUSH_TIMEOUT:?} of closing; RabbitMQ delivers those messages again");
        }
    }

    /// Whether `queue` exists and holds ready messages (asked on a throwaway channel, as a missing
    /// queue closes the channel that asked).
    pub(crate) async fn queue_has_messages(&self, queue: &str) -> bool {
        let Ok(connection) = self.consume.connection().await else {
            return true;
        };
        let Ok(channel) = connection.create_channel().await else {
            return true;
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let has = match channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
        {
            Ok(q) => q.message_count() > 0,
            Err(e) => super::link::reply_code(&e) != Some(404),
        };
        if channel.status().connected() {
            let _ = channel.close(200, "counted").await;
        }
        has
    }
}

struct AmqpBackend {
    shared: Arc<Shared>,
}

#[async_trait]
impl Backend for AmqpBackend {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: self.shared.options.durable,
            // A new group starts with messages sent after it was created (the backlog of messages
            // sent before any group existed goes to the first group only).
            replay: false,
            nack_delay: true,
            // A consumer that dies has its deliveries requeued at once, when its connection closes.
            lease_redelivery: true,
            // No lease to extend: a delivery stays with its living consumer.
            in_progress: true,
            ordered: true,
            end_of_input: true,
            consumer_groups: true,
        }
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        self.shared.publisher.link().check_open()?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(if self.shared.options.durable { 2 } else { 1 });
        if let Some(id) = message.dedup_id.or(message.key) {
            props = props.with_message_id(id.into());
        }
        self.shared
            .publisher
            .send(topic, &message.payload, &props)
            .await
    }

    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.shared.consume.check_open()?;
        let consumer = AmqpConsumer::open(
            self.shared.clone(),
            topic,
            &options.group,
            options.max_in_flight,
            options.finite,
        )
        .await?;
        Ok(Box::new(consumer))
    }

    async fn close(&self) -> Result<(), BusError> {
        self.shared.flush_settlers().await;
        self.shared.publisher.link().close().await;
        self.shared.consume.close().await;
        Ok(())
    }
}
