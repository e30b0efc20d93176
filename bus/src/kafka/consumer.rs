//! The consumer handle and the settling of its deliveries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedReceiver;

use super::headers::Redelivery;
use super::producer::Producer;
use super::pump::{Fetched, Item};
use super::state::{Shared, Ticket};
use crate::{Acker, BusError, Consumer, Delivery};

/// What [`Backend::consumer`](crate::Backend::consumer) returns: hands out what the poll thread
/// queued.
pub(super) struct KafkaConsumer {
    shared: Arc<Shared>,
    rx: UnboundedReceiver<Item>,
    producer: Arc<Producer>,
    runtime: Handle,
    closed: bool,
    ended: bool,
}

impl KafkaConsumer {
    pub(super) fn new(
        shared: Arc<Shared>,
        rx: UnboundedReceiver<Item>,
        producer: Arc<Producer>,
    ) -> Self {
        KafkaConsumer {
            shared,
            rx,
            producer,
            runtime: Handle::current(),
            closed: false,
            ended: false,
        }
    }

    fn delivery(&self, fetched: Fetched) -> Delivery {
        let deliveries = fetched.deliveries.saturating_add(1);
        let acker = KafkaAcker {
            nack: Republish {
                shared: self.shared.clone(),
                producer: self.producer.clone(),
                ticket: fetched.ticket,
                key: fetched.key,
                payload: fetched.payload.clone(),
                deliveries,
            },
            runtime: self.runtime.clone(),
            settled: false,
        };
        Delivery::new(
            self.shared.topic.clone(),
            fetched.payload,
            deliveries,
            Box::new(acker),
        )
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let item = if self.closed {
                self.rx.try_recv().ok()
            } else {
                self.rx.recv().await
            };
            match item {
                None | Some(Item::End) => {
                    self.ended = true;
                    return Ok(None);
                }
                Some(Item::Failed(reason)) => {
                    self.ended = true;
                    return Err(BusError::broker(
                        format!(
                            "consume topic {:?} in group {:?} from {}",
                            self.shared.topic, self.shared.group, self.producer.url
                        ),
                        reason,
                    ));
                }
                Some(Item::Message(fetched)) => {
                    if self.shared.hand_out(&fetched.ticket) {
                        return Ok(Some(self.delivery(fetched)));
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.closed = true;
        self.shared.lock().closing = true;
        self.shared.notify();
        Ok(())
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.closing = true;
            for claim in inner.claims.values_mut() {
                claim.offsets.abandon_queued();
            }
        }
        self.shared.notify();
    }
}

/// Settles one delivery.
struct KafkaAcker {
    nack: Republish,
    runtime: Handle,
    settled: bool,
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settled = true;
        let n = &self.nack;
        if !n.shared.done(&n.ticket) {
            tracing::warn!(
                topic = %n.shared.topic, group = %n.shared.group, partition = n.ticket.partition,
                offset = n.ticket.offset,
                "acked after a rebalance gave its partition to another member, which will get it again"
            );
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        self.settled = true;
        self.nack.run(delay).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.nack.shared.extend(&self.nack.ticket);
        Ok(())
    }
}

impl Drop for KafkaAcker {
    /// A delivery dropped unsettled is nacked (re-published with its delivery counted) in the
    /// background; where that cannot run, it stays uncommitted for the partition's next owner.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let republish = self.nack.clone();
        let abandon = Abandon(Some((self.nack.shared.clone(), self.nack.ticket)));
        self.runtime.spawn(async move {
            let abandon = abandon;
            match republish.run(None).await {
                Ok(()) => abandon.disarm(),
                Err(e) => tracing::warn!(topic = %republish.shared.topic, error = %e,
                    "cannot re-publish a dropped delivery; it stays uncommitted, so the partition's \
                     next owner gets it"),
            }
        });
    }
}

/// What a nack needs: the message, and where it came from.
#[derive(Clone)]
struct Republish {
    shared: Arc<Shared>,
    producer: Arc<Producer>,
    ticket: Ticket,
    key: Option<Bytes>,
    payload: Bytes,
    /// Deliveries so far, this one included.
    deliveries: u32,
}

impl Republish {
    /// Publishes a copy for this group (its delivery count and not-before time in headers), then
    /// marks the original done. If the copy cannot be published, the original stays uncommitted.
    async fn run(&self, delay: Option<Duration>) -> Result<(), BusError> {
        let headers = Redelivery::nacked(&self.shared.group, self.deliveries, delay);
        let sent = self
            .producer
            .send(
                &self.shared.topic,
                self.key.as_deref(),
                &self.payload,
                Some(headers),
            )
            .await;
        match sent {
            Ok((partition, offset)) => {
                self.shared.expect(partition, offset);
                self.shared.done(&self.ticket);
                Ok(())
            }
            Err(e) => {
                self.shared.abandon(&self.ticket);
                Err(e)
            }
        }
    }
}

/// Marks a delivery abandoned when dropped armed (a background re-publish that never ran).
struct Abandon(Option<(Arc<Shared>, Ticket)>);

impl Abandon {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some((shared, ticket)) = self.0.take() {
            shared.abandon(&ticket);
        }
    }
}
