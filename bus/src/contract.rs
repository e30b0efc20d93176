//! The delivery contract every backend implements.
//!
//! - **At least once.** A message is handed out again until it is acked. A consumer that crashes (or a
//!   [`Delivery`] dropped without being settled) means redelivery: at once where the backend can tell, else
//!   after a lease (ack wait). Duplicates are possible; loss is not.
//! - **Producers confirm.** [`Backend::send`] returns only once the broker has stored the message.
//! - **Consumer groups.** Consumers of one topic with the same group share its messages; each group
//!   gets all of them.
//! - **Nack** hands the message out again, after a delay where the backend has
//!   [`Capabilities::nack_delay`](crate::Capabilities).
//! - **Close.** [`Consumer::close`] stops fetching. Deliveries already handed out stay valid: they can
//!   still be acked or nacked, over a still-open connection, until the [`Bus`](crate::Bus) itself closes.
//!
//! Applications use [`Bus`](crate::Bus) and [`Subscription`](crate::Subscription), which add task decoding,
//! dead-lettering and the redelivery limit on top of these traits.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{BusError, Capabilities};

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The bytes (for tasks: one JSON object, no trailing newline).
    pub payload: Bytes,
    /// A key that keeps messages of one key in order where the broker partitions (Kafka); the task id.
    pub key: Option<String>,
    /// A de-duplication id: brokers that drop re-published duplicates use it (JetStream's `Nats-Msg-Id`).
    pub dedup_id: Option<String>,
}

impl Outgoing {
    /// A message with only a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Outgoing {
            payload: payload.into(),
            key: None,
            dedup_id: None,
        }
    }
}

/// How to consume a topic.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// The consumer group. Members of one group share a topic; each group gets every message.
    pub group: String,
    /// End (yield `None`) on reaching the end of what the topic holds instead of waiting for more.
    /// Needs [`Capabilities::end_of_input`](crate::Capabilities); `stdio:` is always finite.
    pub finite: bool,
    /// How many unacked deliveries this consumer may hold at once (a prefetch hint for the broker).
    pub max_in_flight: usize,
}

impl ConsumerOptions {
    /// Options for `group`, following the topic, with up to 256 deliveries in flight.
    pub fn group(group: impl Into<String>) -> Self {
        ConsumerOptions {
            group: group.into(),
            finite: false,
            max_in_flight: 256,
        }
    }

    /// End at the end of what the topic holds (builder style).
    pub fn finite(mut self, finite: bool) -> Self {
        self.finite = finite;
        self
    }

    /// Sets the in-flight limit (builder style); at least 1.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

/// A bus backend: one connection to one broker (or directory, or process-local queue).
///
/// Methods take `&self` and may be called concurrently from many tasks: concurrent sends are how a
/// caller keeps several publishes in flight.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and errors (`mem`, `file`, `nats` …).
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Stores one message on `topic` and returns once it is stored (publisher confirm, JetStream ack,
    /// Kafka delivery report, line written). Creates the topic when the backend needs that.
    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError>;

    /// Opens a consumer of `topic` in `options.group`, creating the topic and group when missing.
    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError>;

    /// Flushes what is pending and closes the connection. Deliveries not yet settled are redelivered
    /// later.
    async fn close(&self) -> Result<(), BusError>;
}

/// A stream of deliveries from one topic for one group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits for the next delivery. `Ok(None)` means the consumer has ended: it was closed, or it is
    /// finite and reached the end of its input. Errors are transient unless they say otherwise; the
    /// caller may call `next` again.
    async fn next(&mut self) -> Result<Option<Delivery>, BusError>;

    /// Stops fetching. Deliveries already handed out stay valid (see the module docs). After `close`,
    /// `next` returns `Ok(None)` once anything already fetched has been handed out.
    async fn close(&mut self) -> Result<(), BusError>;
}

/// How a backend settles one delivery. Implemented by backends; used through [`Delivery`].
#[async_trait]
pub trait Acker: Send + Sync {
    /// Acknowledges the message: it is done and will not be delivered to this group again.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;

    /// Hands the message out again, after `delay` when given (and supported).
    async fn nack(self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError>;

    /// Tells the broker work is still going on, extending the lease (JetStream `+WIP`).
    async fn in_progress(&self) -> Result<(), BusError>;
}

/// One message handed to a consumer, to be acked or nacked.
///
/// Dropping a delivery without settling it is like a crash: it is redelivered later.
pub struct Delivery {
    /// The message bytes.
    pub payload: Bytes,
    topic: String,
    delivery_count: u32,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery of `payload` from `topic`, handed out for the `delivery_count`-th time (1 the first).
    pub fn new(
        topic: impl Into<String>,
        payload: Bytes,
        delivery_count: u32,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery {
            payload,
            topic: topic.into(),
            delivery_count,
            acker,
        }
    }

    /// The topic it came from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many times this message has been handed to this group, counting this time (1 the first).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Acknowledges the message.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Hands the message out again, after `delay` when given.
    pub async fn nack(self, delay: Option<Duration>) -> Result<(), BusError> {
        self.acker.nack(delay).await
    }

    /// Extends the lease while work goes on.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.acker.in_progress().await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("delivery_count", &self.delivery_count)
            .field("bytes", &self.payload.len())
            .finish()
    }
}
