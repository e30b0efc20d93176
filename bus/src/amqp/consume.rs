//! Consumers. Each reads its group's queue and, beside it, its topic's backlog queue (messages sent
//! while no group's queue was bound), each on a channel of its own with its own settler, and reopens
//! both when they are lost.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::mpsc;

use super::acker::{delivery_count, AmqpAcker, DelayTracker};
use super::enabled::Shared;
use super::link::{with_retries, Failure};
use super::names;
use super::settle::{self, Settle};
use super::topology;
use crate::{BusError, Consumer, Delivery};

/// One consumer of a group.
pub(crate) struct AmqpConsumer {
    shared: Arc<Shared>,
    topic: String,
    /// The group's queue.
    queue: String,
    backlog: String,
    prefetch: u16,
    finite: bool,
    closed: bool,
    session: Option<Session>,
    delays: Arc<DelayTracker>,
}

/// The two feeds of a consumer, opened together.
struct Session {
    group: Feed,
    backlog: Feed,
}

/// One queue consumed on a channel of its own.
struct Feed {
    queue: String,
    channel: Channel,
    tag: String,
    stream: lapin::Consumer,
    settle: mpsc::UnboundedSender<Settle>,
    /// The stream ended after the consumer was cancelled.
    ended: bool,
}

/// Which feed a delivery came from.
#[derive(Clone, Copy)]
enum From {
    Group,
    Backlog,
}

type Item = Option<lapin::Result<lapin::message::Delivery>>;

impl AmqpConsumer {
    /// Declares the group's queue and the topic's backlog, and starts consuming both.
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
            backlog: names::backlog_queue(&options.exchange, topic),
            prefetch: prefetch.max(1),
            finite,
            closed: false,
            session: None,
            delays: Arc::default(),
            shared,
        };
        consumer.reopen().await?;
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
        let channel = self.channel(&connection).await?;
        topology::declare_exchanges(&channel, o).await?;
        topology::declare_bound_queue(&channel, o, &self.queue, &self.topic).await?;
        topology::declare_backlog(&channel, o, &self.topic).await?;
        let group = self.feed(channel, &self.queue).await?;
        let channel = self.channel(&connection).await?;
        let backlog = self.feed(channel, &self.backlog).await?;
        Ok(Session { group, backlog })
    }

    async fn channel(&self, connection: &Connection) -> Result<Channel, Failure> {
        let op = || format!("consume queue {:?}", self.queue);
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Failure::lapin(op(), &e))?;
        let qos = channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await;
        qos.map_err(|e| Failure::lapin(op(), &e))?;
        Ok(channel)
    }

    async fn feed(&self, channel: Channel, queue: &str) -> Result<Feed, Failure> {
        let tag = format!("taskbus-{}", uuid::Uuid::new_v4());
        let stream = channel
            .basic_consume(
                queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Failure::lapin(format!("consume queue {queue:?}"), &e))?;
        let settle = settle::spawn(channel.clone(), queue.to_owned());
        self.shared.track_settler(&settle);
        Ok(Feed {
            queue: queue.to_owned(),
            channel,
            tag,
            stream,
            settle,
            ended: false,
        })
    }

    /// Turns a lapin delivery into a [`Delivery`] settled through its feed's settler.
    fn hand_out(&self, from: From, d: lapin::message::Delivery) -> Option<Delivery> {
        let session = self.session.as_ref()?;
        let feed = match from {
            From::Group => &session.group,
            From::Backlog => &session.backlog,
        };
        let count = delivery_count(&d, self.shared.options.queue_type);
        let payload = Bytes::from(d.data);
        let acker = AmqpAcker {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            tag: d.delivery_tag,
            settle: feed.settle.clone(),
            status: feed.channel.status().clone(),
            payload: payload.clone(),
            properties: d.properties,
            count,
            delays: self.delays.clone(),
            settled: false,
        };
        Some(Delivery::new(
            self.topic.clone(),
            payload,
            count,
            Box::new(acker),
        ))
    }

    /// Waits for a delivery from either feed (the backlog first: its messages are older).
    async fn next_item(&mut self) -> Result<Option<(From, Item)>, Failure> {
        let Some(s) = self.session.as_mut() else {
            return Ok(None);
        };
        if let Some(ready) = s.ready() {
            return Ok(Some(ready));
        }
        if self.finite {
            return self.finite_wait().await;
        }
        let (backlog, group) = (&mut s.backlog, &mut s.group);
        Ok(tokio::select! {
            item = backlog.stream.next(), if !backlog.ended => Some((From::Backlog, item)),
            item = group.stream.next(), if !group.ended => Some((From::Group, item)),
            else => None,
        })
    }

    /// For a finite consumer with nothing buffered: waits until a delivery comes, or returns `None`
    /// once both queues are drained and no delayed nack of ours is still on its way back.
    async fn finite_wait(&mut self) -> Result<Option<(From, Item)>, Failure> {
        loop {
            let waiting = self.delays.waiting(&self.shared).await;
            let Some(s) = self.session.as_mut() else {
                return Ok(None);
            };
            // On each feed's own channel: RabbitMQ writes any delivery it sent before the reply
            // first, so after both replies the streams hold everything on its way.
            let empty = s.group.is_empty().await? && s.backlog.is_empty().await?;
            if let Some(ready) = s.ready() {
                return Ok(Some(ready));
            }
            if empty && !waiting {
                return Ok(None);
            }
            let (backlog, group) = (&mut s.backlog, &mut s.group);
            let next = async {
                tokio::select! {
                    item = backlog.stream.next(), if !backlog.ended => Some((From::Backlog, item)),
                    item = group.stream.next(), if !group.ended => Some((From::Group, item)),
                    else => None,
                }
            };
            if let Ok(item) = tokio::time::timeout(Duration::from_millis(250), next).await {
                return Ok(item);
            }
        }
    }
}

impl Session {
    /// A delivery (or the end of a stream) already buffered, without waiting.
    fn ready(&mut self) -> Option<(From, Item)> {
        for (from, feed) in [
            (From::Backlog, &mut self.backlog),
            (From::Group, &mut self.group),
        ] {
            if feed.ended {
                continue;
            }
            if let Some(item) = feed.stream.next().now_or_never() {
                return Some((from, item));
            }
        }
        None
    }

    fn feed(&mut self, from: From) -> &mut Feed {
        match from {
            From::Group => &mut self.group,
            From::Backlog => &mut self.backlog,
        }
    }
}

impl Feed {
    /// Whether the queue has no ready message.
    async fn is_empty(&self) -> Result<bool, Failure> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self
            .channel
            .queue_declare(&self.queue, passive, FieldTable::default())
            .await
            .map_err(|e| Failure::lapin(format!("count the messages of {:?}", self.queue), &e))?;
        Ok(queue.message_count() == 0)
    }

    async fn cancel(&self) -> lapin::Result<()> {
        self.channel
            .basic_cancel(&self.tag, BasicCancelOptions::default())
            .await
    }

    /// Cancels the consumer and requeues what it fetched and never handed out; deliveries already
    /// handed out stay valid.
    fn stop_in_background(mut self) {
        if !self.channel.status().connected() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if self.cancel().await.is_err() {
                return;
            }
            while let Some(Some(Ok(d))) = self.stream.next().now_or_never() {
                let _ = self.settle.send(Settle::Requeue(d.delivery_tag));
            }
        });
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
            let lost = match self.next_item().await {
                Ok(Some((from, Some(Ok(delivery))))) => match self.hand_out(from, delivery) {
                    Some(delivery) => return Ok(Some(delivery)),
                    None => continue,
                },
                Ok(Some((_, Some(Err(e))))) => e.to_string(),
                Ok(Some((from, None))) if self.closed => {
                    if let Some(s) = self.session.as_mut() {
                        s.feed(from).ended = true;
                    }
                    continue;
                }
                Ok(Some((_, None))) => "RabbitMQ cancelled the consumer".to_owned(),
                // Both streams ended after close (or a finite consumer is drained).
                Ok(None) => {
                    if self.closed {
                        self.session = None;
                    }
                    return Ok(None);
                }
                Err(f) => f.error.to_string(),
            };
            tracing::warn!(queue = %self.queue, reason = %lost, "consumer lost; reopening");
            self.stop();
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.closed = true;
        if let Some(s) = &self.session {
            let cancelled = futures::join!(s.group.cancel(), s.backlog.cancel());
            if let (Err(e), _) | (_, Err(e)) = cancelled {
                tracing::debug!(queue = %self.queue, error = %e, "cancelling a consumer whose channel is gone");
                self.session = None;
            }
        }
        Ok(())
    }
}

impl AmqpConsumer {
    /// Drops the session, stopping its feeds.
    fn stop(&mut self) {
        if let Some(s) = self.session.take() {
            s.group.stop_in_background();
            s.backlog.stop_in_background();
        }
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}
