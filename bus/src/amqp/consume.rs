//! Consumers (one channel each, reopened when lost) and the ackers of their deliveries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::enabled::Shared;
use super::link::{with_retries, Failure};
use super::names;
use super::options::QueueType;
use super::settle::{self, Settle};
use super::topology;
use crate::{Acker, BusError, Consumer, Delivery};

/// The header in which this bus carries how many times a republished message was delivered.
const DELIVERIES_HEADER: &str = "x-taskbus-deliveries";
/// The header in which quorum queues count a message's returns.
const QUORUM_COUNT_HEADER: &str = "x-delivery-count";
/// Backlog re-checks after a consumer opens, to catch a publisher that bound the backlog again in
/// the instant between a group's queue being bound and the backlog being unbound.
const BACKLOG_RECHECKS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(15)];

/// One consumer of a group's queue.
pub(crate) struct AmqpConsumer {
    shared: Arc<Shared>,
    topic: String,
    queue: String,
    prefetch: u16,
    finite: bool,
    closed: bool,
    session: Option<Session>,
    delays: Arc<DelayTracker>,
}

/// A consumer's channel, its stream of deliveries and its settler.
struct Session {
    channel: Channel,
    tag: String,
    stream: lapin::Consumer,
    settle: mpsc::UnboundedSender<Settle>,
}

impl AmqpConsumer {
    /// Declares the group's queue, moves the topic's backlog into it and starts consuming.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        topic: &str,
        group: &str,
        max_in_flight: usize,
        finite: bool,
    ) -> Result<AmqpConsumer, BusError> {
        let options = shared.options.clone();
        let prefetch = options
            .prefetch
            .unwrap_or_else(|| u16::try_from(max_in_flight).unwrap_or(u16::MAX));
        let mut consumer = AmqpConsumer {
            topic: topic.to_owned(),
            queue: names::group_queue(&options.exchange, topic, group),
            prefetch: prefetch.max(1),
            finite,
            closed: false,
            session: None,
            delays: Arc::default(),
            shared,
        };
        consumer.reopen().await?;
        consumer.recheck_backlog_later();
        Ok(consumer)
    }

    /// Opens a session, retrying while the connection is coming back.
    async fn reopen(&mut self) -> Result<(), BusError> {
        let what = format!("consume queue {:?}", self.queue);
        let this = &*self;
        let session = with_retries(&self.shared.consume, &what, || this.open_session()).await?;
        self.session = Some(session);
        Ok(())
    }

    async fn open_session(&self) -> Result<Session, Failure> {
        let o = &self.shared.options;
        let connection = self
            .shared
            .consume
            .connection()
            .await
            .map_err(Failure::fatal)?;
        let op = || format!("consume queue {:?}", self.queue);
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Failure::lapin(op(), &e))?;
        let qos = channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await;
        qos.map_err(|e| Failure::lapin(op(), &e))?;
        topology::declare_exchange(&channel, o).await?;
        topology::declare_bound_queue(&channel, o, &self.queue, &self.topic).await?;
        topology::adopt_backlog(&connection, o, &self.topic, &self.queue).await?;
        let tag = format!("taskbus-{}", uuid::Uuid::new_v4());
        let stream = channel
            .basic_consume(
                &self.queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Failure::lapin(op(), &e))?;
        let settle = settle::spawn(channel.clone(), self.queue.clone());
        Ok(Session {
            channel,
            tag,
            stream,
            settle,
        })
    }

    fn recheck_backlog_later(&self) {
        let (shared, topic, queue) = (self.shared.clone(), self.topic.clone(), self.queue.clone());
        tokio::spawn(async move {
            for wait in BACKLOG_RECHECKS {
                tokio::time::sleep(wait).await;
                if shared.consume.is_closed() {
                    return;
                }
                let Ok(connection) = shared.consume.connection().await else {
                    continue;
                };
                if let Err(f) =
                    topology::adopt_backlog(&connection, &shared.options, &topic, &queue).await
                {
                    tracing::warn!(topic, error = %f.error, "checking the topic's backlog");
                }
            }
        });
    }

    /// Turns a lapin delivery into a [`Delivery`], registering it with the settler first.
    fn hand_out(&self, session: &Session, d: lapin::message::Delivery) -> Delivery {
        let count = delivery_count(&d, self.shared.options.queue_type);
        let _ = session.settle.send(Settle::Handed(d.delivery_tag));
        let payload = Bytes::from(d.data);
        let acker = AmqpAcker {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            tag: d.delivery_tag,
            settle: session.settle.clone(),
            payload: payload.clone(),
            properties: d.properties,
            count,
            delays: self.delays.clone(),
            settled: false,
        };
        Delivery::new(self.topic.clone(), payload, count, Box::new(acker))
    }

    /// For a finite consumer with nothing buffered: whether the queue is drained (and no delayed
    /// nack of ours is still on its way back).
    async fn drained(&self, session: &Session) -> Result<bool, Failure> {
        if self.delays.waiting(&self.shared).await {
            return Ok(false);
        }
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        // On the consumer's own channel: RabbitMQ writes any delivery it sent before the reply
        // first, so after the reply the stream holds everything on its way.
        let queue = session
            .channel
            .queue_declare(&self.queue, passive, FieldTable::default())
            .await
            .map_err(|e| Failure::lapin(format!("count the messages of {:?}", self.queue), &e))?;
        Ok(queue.message_count() == 0)
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            if self.session.is_none() {
                if self.closed {
                    return Ok(None);
                }
                self.reopen().await?;
            }
            let Some(session) = self.session.as_mut() else {
                continue;
            };
            let item = if self.finite {
                match session.stream.next().now_or_never() {
                    Some(item) => item,
                    None => match self.finite_wait().await {
                        Ok(Some(item)) => item,
                        Ok(None) => return Ok(None),
                        Err(f) => {
                            tracing::warn!(queue = %self.queue, error = %f.error, "consumer channel lost; reopening");
                            self.session = None;
                            continue;
                        }
                    },
                }
            } else {
                session.stream.next().await
            };
            let Some(session) = self.session.as_ref() else {
                continue;
            };
            match item {
                Some(Ok(delivery)) => return Ok(Some(self.hand_out(session, delivery))),
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "consumer channel lost; reopening");
                    self.session = None;
                }
                None if self.closed => {
                    self.session = None;
                    return Ok(None);
                }
                None => {
                    tracing::warn!(queue = %self.queue, "RabbitMQ cancelled the consumer; reopening");
                    self.session = None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.closed = true;
        if let Some(session) = &self.session {
            if let Err(e) = session
                .channel
                .basic_cancel(&session.tag, BasicCancelOptions::default())
                .await
            {
                tracing::debug!(queue = %self.queue, error = %e, "cancelling a consumer whose channel is gone");
                self.session = None;
            }
        }
        Ok(())
    }
}

type Item = Option<lapin::Result<lapin::message::Delivery>>;

impl AmqpConsumer {
    /// Waits, for a finite consumer, until a delivery comes (`Some`) or the queue is drained (`None`).
    async fn finite_wait(&mut self) -> Result<Option<Item>, Failure> {
        loop {
            let Some(session) = self.session.as_ref() else {
                return Ok(Some(None));
            };
            let drained = self.drained(session).await?;
            let Some(session) = self.session.as_mut() else {
                return Ok(Some(None));
            };
            if let Some(item) = session.stream.next().now_or_never() {
                return Ok(Some(item));
            }
            if drained {
                return Ok(None);
            }
            if let Ok(item) =
                tokio::time::timeout(Duration::from_millis(500), session.stream.next()).await
            {
                return Ok(Some(item));
            }
        }
    }
}

impl Drop for AmqpConsumer {
    /// Stops the consumer and hands back what it fetched and never handed out; deliveries already
    /// handed out stay valid.
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        if !session.channel.status().connected() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let cancel = session
                .channel
                .basic_cancel(&session.tag, BasicCancelOptions::default());
            if cancel.await.is_err() {
                return;
            }
            while let Some(Some(Ok(d))) = session.stream.next().now_or_never() {
                let _ = session.settle.send(Settle::Requeue(d.delivery_tag));
            }
        });
    }
}

/// How many times this delivery has been handed to its group, counting this time.
fn delivery_count(d: &lapin::message::Delivery, queue_type: QueueType) -> u32 {
    let headers = d.properties.headers().as_ref();
    let carried = header_u32(headers, DELIVERIES_HEADER).unwrap_or(0);
    let redelivered = u32::from(d.redelivered);
    let returned = match queue_type {
        QueueType::Quorum => header_u32(headers, QUORUM_COUNT_HEADER)
            .unwrap_or(0)
            .max(redelivered),
        QueueType::Classic => redelivered,
    };
    carried.saturating_add(returned).saturating_add(1)
}

fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(name)?;
    let n: i128 = match *value {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n.into(),
        _ => return None,
    };
    Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// The delay queues a consumer nacked into, with when their last message is due back.
#[derive(Default)]
struct DelayTracker {
    due: Mutex<HashMap<String, Instant>>,
}

impl DelayTracker {
    fn track(&self, queue: String, due: Instant) {
        let mut map = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(queue).or_insert(due);
        *entry = (*entry).max(due);
    }

    /// Whether a message nacked with a delay may still be waiting in a delay queue.
    async fn waiting(&self, shared: &Shared) -> bool {
        let now = Instant::now();
        let queues: Vec<(String, Instant)> = {
            let map = self.due.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(q, due)| (q.clone(), *due)).collect()
        };
        if queues.iter().any(|(_, due)| *due > now) {
            return true;
        }
        for (queue, _) in queues {
            if shared.queue_has_messages(&queue).await {
                return true;
            }
            self.due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&queue);
        }
        false
    }
}

/// Settles one delivery.
struct AmqpAcker {
    shared: Arc<Shared>,
    /// The group's queue.
    queue: String,
    tag: u64,
    settle: mpsc::UnboundedSender<Settle>,
    payload: Bytes,
    properties: BasicProperties,
    count: u32,
    delays: Arc<DelayTracker>,
    settled: bool,
}

impl AmqpAcker {
    async fn settle(
        &mut self,
        make: impl FnOnce(u64, settle::Done) -> Settle,
    ) -> Result<(), BusError> {
        self.settled = true;
        let (done, result) = oneshot::channel();
        let closed = || BusError::Closed(format!("the consumer of queue {:?}", self.queue));
        self.settle
            .send(make(self.tag, done))
            .map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }

    /// The message's properties for a republished copy: its delivery count so far in our header,
    /// without the quorum queue's own count (the copy is a new message to the queue).
    fn republished_properties(&self) -> BasicProperties {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        let mut inner = headers.inner().clone();
        inner.remove(QUORUM_COUNT_HEADER);
        headers = FieldTable::from(inner);
        headers.insert(
            DELIVERIES_HEADER.into(),
            AMQPValue::LongLongInt(self.count.into()),
        );
        self.properties.clone().with_headers(headers)
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settle(Settle::Ack).await
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        // A copy goes back (to the group's queue, or to a delay queue that returns it there later)
        // carrying the delivery count; once RabbitMQ confirms it, the original is acked. Not a
        // requeue, even on quorum queues: a finite consumer could not see a requeue in flight.
        let publisher = &self.shared.publisher;
        let props = self.republished_properties();
        match delay.filter(|d| !d.is_zero()) {
            None => {
                publisher
                    .send_to_queue(&self.queue, &self.payload, &props)
                    .await?;
            }
            Some(delay) => {
                let delay_ms = names::round_delay(delay);
                let delay_queue = publisher.declare_delay_queue(&self.queue, delay_ms).await?;
                publisher
                    .send_to_queue(&delay_queue, &self.payload, &props)
                    .await?;
                let due = Instant::now() + Duration::from_millis(delay_ms.into());
                self.delays.track(delay_queue, due);
            }
        }
        self.settle(Settle::Ack).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        // RabbitMQ has no lease to extend: a delivery stays with its consumer while the channel lives.
        Ok(())
    }
}

impl Drop for AmqpAcker {
    /// A delivery dropped unsettled goes back to its queue at once, like a crash.
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.settle.send(Settle::Requeue(self.tag));
        }
    }
}
