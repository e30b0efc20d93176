//! Settling one delivery: ack, nack (now or after a delay), and what a delivery counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ChannelStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::enabled::Shared;
use super::names;
use super::options::QueueType;
use super::settle::Settle;
use crate::{Acker, BusError};

/// The header in which this bus carries how many times a republished message was delivered.
const DELIVERIES_HEADER: &str = "x-taskbus-deliveries";
/// The header in which quorum queues count a message's returns.
const QUORUM_COUNT_HEADER: &str = "x-delivery-count";

/// Settles one delivery through the settler of the channel it came on.
pub(crate) struct AmqpAcker {
    pub(crate) shared: Arc<Shared>,
    /// The group's queue: where nacked messages go back to.
    pub(crate) queue: String,
    pub(crate) tag: u64,
    pub(crate) settle: mpsc::UnboundedSender<Settle>,
    /// The status of the channel it came on.
    pub(crate) status: ChannelStatus,
    pub(crate) payload: Bytes,
    pub(crate) properties: BasicProperties,
    pub(crate) count: u32,
    pub(crate) delays: Arc<DelayTracker>,
    pub(crate) settled: bool,
}

impl AmqpAcker {
    /// Hands the ack to the settler, which writes it (batched) on the channel the delivery came on.
    /// Fails when that channel is gone: RabbitMQ then delivers the message again.
    fn ack_now(&mut self) -> Result<(), BusError> {
        self.settled = true;
        let gone = || {
            BusError::broker(
                format!("ack of a delivery from queue {:?}", self.queue),
                "its channel to RabbitMQ has closed, so RabbitMQ delivers the message again",
            )
        };
        if !self.status.connected() {
            return Err(gone());
        }
        self.settle.send(Settle::Ack(self.tag)).map_err(|_| gone())
    }

    /// The message's properties for a republished copy: its delivery count so far in our header,
    /// without the quorum queue's own count (the copy is a new message to the queue).
    fn republished_properties(&self) -> BasicProperties {
        let mut headers = self
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        headers.remove(QUORUM_COUNT_HEADER);
        headers.insert(
            DELIVERIES_HEADER.into(),
            AMQPValue::LongLongInt(self.count.into()),
        );
        self.properties
            .clone()
            .with_headers(FieldTable::from(headers))
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.ack_now()
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
        self.ack_now()
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

/// How many times a delivery has been handed to its group, counting this time.
pub(crate) fn delivery_count(d: &lapin::message::Delivery, queue_type: QueueType) -> u32 {
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
pub(crate) struct DelayTracker {
    due: Mutex<HashMap<String, Instant>>,
}

impl DelayTracker {
    fn track(&self, queue: String, due: Instant) {
        let mut map = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(queue).or_insert(due);
        *entry = (*entry).max(due);
    }

    /// Whether a message nacked with a delay may still be waiting in a delay queue.
    pub(crate) async fn waiting(&self, shared: &Shared) -> bool {
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
