//! [`Bus`]: a connection to one bus, configured by one URL.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, TryStreamExt};

use crate::config::{BusOptions, BusUrl, SCHEMES};
use crate::error::check_name;
use crate::{
    Backend, BusError, Capabilities, Consumer, ConsumerOptions, Outgoing, Subscription, Task,
};

/// A connection to a bus: send tasks to topics, subscribe to topics in consumer groups.
///
/// Cheap to clone; clones share the connection. Safe to use from many tasks at once: concurrent
/// [`send`](Bus::send)s are how a caller keeps several publishes in flight.
///
/// ```
/// # tokio_test_block_on(async {
/// use taskbus_bus::{Bus, Task};
/// let bus = Bus::connect("mem:doc-example").await?;
/// bus.send("hello", &Task::new("hello", "world")).await?;
/// let mut sub = bus.subscribe("hello", "workers").await?;
/// let received = sub.next().await?.expect("a task");
/// assert_eq!(received.task.info, "world");
/// received.ack().await?;
/// # Ok::<(), taskbus_bus::BusError>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct Bus {
    backend: Arc<dyn Backend>,
    options: Arc<BusOptions>,
    url: Arc<str>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("url", &self.url).finish()
    }
}

impl Bus {
    /// Connects to the bus named by `url`: `mem:[NAME]`, `file://DIR`, `stdio:`, `nats://…`,
    /// `amqp://…`, `kafka://…`, with options as query parameters.
    pub async fn connect(url: &str) -> Result<Bus, BusError> {
        let mut parsed = BusUrl::parse(url)?;
        let options = BusOptions::from_url(&mut parsed)?;
        let backend: Arc<dyn Backend> = match parsed.scheme() {
            "mem" => crate::mem::connect(&mut parsed)?,
            "file" => crate::file::connect(&mut parsed).await?,
            "stdio" => crate::file::connect_stdio(&mut parsed).await?,
            "nats" => crate::nats::connect(&mut parsed).await?,
            "amqp" | "amqps" => crate::amqp::connect(&mut parsed).await?,
            "kafka" => crate::kafka::connect(&mut parsed).await?,
            other => {
                return Err(parsed.error(format!("unknown scheme {other:?}; use one of {SCHEMES}")))
            }
        };
        parsed.finish()?;
        Ok(Bus::from_backend(backend, options, &parsed.redacted()))
    }

    /// A bus over a backend you built yourself.
    pub fn from_backend(backend: Arc<dyn Backend>, options: BusOptions, url: &str) -> Bus {
        Bus {
            backend,
            options: Arc::new(options),
            url: Arc::from(url),
        }
    }

    /// The URL this bus was opened with (passwords removed).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The options shared by every backend.
    pub fn options(&self) -> &BusOptions {
        &self.options
    }

    /// What the backend can do.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Publishes `task` to `topic` and returns once the bus has stored it.
    pub async fn send(&self, topic: &str, task: &Task) -> Result<(), BusError> {
        let message = Outgoing {
            payload: Bytes::from(task.to_json_bytes()),
            key: (!task.id.is_empty()).then(|| task.id.clone()),
            dedup_id: task.dedup_key(),
        };
        self.send_message(topic, message).await
    }

    /// Publishes many tasks to `topic`, keeping up to `in_flight` publishes unconfirmed at once, and
    /// returns once every one is stored. On an error, tasks after the failing one may or may not have
    /// been sent; the error says which task failed.
    pub async fn send_all<'a, I>(
        &self,
        topic: &str,
        tasks: I,
        in_flight: usize,
    ) -> Result<usize, BusError>
    where
        I: IntoIterator<Item = &'a Task>,
    {
        stream::iter(tasks.into_iter().map(Ok))
            .map_ok(|task| async move {
                self.send(topic, task).await.map_err(|e| {
                    BusError::broker(
                        format!("publish of task {:?} to topic {topic:?}", task.id),
                        e,
                    )
                })
            })
            .try_buffer_unordered(in_flight.max(1))
            .try_fold(0usize, |n, ()| async move { Ok(n + 1) })
            .await
    }

    /// Publishes raw bytes to `topic` (no check that they are a task).
    pub async fn send_raw(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        self.send_message(topic, Outgoing::new(payload)).await
    }

    /// Publishes a prepared message to `topic`.
    pub async fn send_message(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        check_name("topic", topic)?;
        self.backend.send(topic, message).await
    }

    /// Subscribes to `topic` in `group`, following the topic.
    pub async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription, BusError> {
        self.subscribe_with(topic, ConsumerOptions::group(group))
            .await
    }

    /// Subscribes to `topic` with `options`.
    pub async fn subscribe_with(
        &self,
        topic: &str,
        options: ConsumerOptions,
    ) -> Result<Subscription, BusError> {
        if topic == self.options.dead_letter {
            return Err(BusError::InvalidName {
                what: "topic",
                name: topic.to_owned(),
                reason: "it is the dead-letter topic, whose entries are not tasks; read it with \
                         Bus::consumer and DeadLetter::from_json"
                    .to_owned(),
            });
        }
        let consumer = self.consumer(topic, &options).await?;
        Ok(Subscription::new(
            consumer,
            self.clone(),
            topic,
            &options.group,
        ))
    }

    /// A raw consumer of `topic`: bytes, no decoding, no dead-lettering.
    pub async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        check_name("topic", topic)?;
        check_name("group", &options.group)?;
        if options.finite && !self.capabilities().end_of_input {
            return Err(BusError::Unsupported {
                backend: self.backend.name(),
                what: "end at the end of a topic (finite consumers)".to_owned(),
            });
        }
        self.backend.consumer(topic, options).await
    }

    /// Flushes and closes the connection.
    pub async fn close(&self) -> Result<(), BusError> {
        self.backend.close().await
    }
}
