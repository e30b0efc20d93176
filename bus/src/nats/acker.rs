//! Settling one JetStream delivery: `+ACK`, `-NAK [{"delay":…}]`, `+WPI`, each confirmed by the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::{Acker, BusError};

/// How long after a delayed nack's delay a finite consumer still counts it as coming back: the
/// server redelivers it on its own timer, a little after the delay.
const DELAYED_NACK_MARGIN: Duration = Duration::from_millis(500);

/// What one consumer holds: deliveries handed out and not yet settled, and nacks still waiting out
/// their delay. Shared by the consumer and the ackers of its deliveries.
#[derive(Debug, Default)]
pub(super) struct Flow {
    held: AtomicUsize,
    delayed: Arc<AtomicUsize>,
    /// Woken whenever a delivery is settled.
    pub(super) freed: Notify,
}

impl Flow {
    /// Deliveries handed out (or fetched and about to be) and not yet settled.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// This consumer's nacks with a delay that have not come back yet.
    pub(super) fn delayed(&self) -> usize {
        self.delayed.load(Ordering::Acquire)
    }

    pub(super) fn take(&self) {
        self.held.fetch_add(1, Ordering::AcqRel);
    }

    fn release(&self) {
        // Never below zero, even if accounting were off.
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
        self.freed.notify_one();
    }

    fn nacked_with_delay(&self, delay: Duration) {
        self.delayed.fetch_add(1, Ordering::AcqRel);
        let delayed = Arc::clone(&self.delayed);
        tokio::spawn(async move {
            tokio::time::sleep(delay + DELAYED_NACK_MARGIN).await;
            delayed.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Settles one message through its JetStream reply subject.
pub(super) struct NatsAcker {
    client: Client,
    reply: Subject,
    topic: Arc<str>,
    flow: Arc<Flow>,
    settled: bool,
}

impl NatsAcker {
    /// An acker for the message whose ack subject is `reply`; the caller has already counted it in
    /// `flow` with [`Flow::take`].
    pub(super) fn new(client: Client, reply: Subject, topic: Arc<str>, flow: Arc<Flow>) -> Self {
        NatsAcker {
            client,
            reply,
            topic,
            flow,
            settled: false,
        }
    }

    /// Sends `payload` to the ack subject and waits for the server's confirmation.
    async fn confirm(&self, what: &str, payload: Bytes) -> Result<(), BusError> {
        self.client
            .request(self.reply.clone(), payload)
            .await
            .map(drop)
            .map_err(|e| {
                BusError::broker(
                    format!("{what} of a message from topic {:?}", self.topic),
                    format!("{e}; the message will be delivered again after its ack wait"),
                )
            })
    }

    fn settle(&mut self) {
        if !self.settled {
            self.settled = true;
            self.flow.release();
        }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settle();
        self.confirm("ack", Bytes::from_static(b"+ACK")).await
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        self.settle();
        let payload = match delay.filter(|d| !d.is_zero()) {
            None => Bytes::from_static(b"-NAK"),
            Some(d) => {
                self.flow.nacked_with_delay(d);
                Bytes::from(format!("-NAK {{\"delay\":{}}}", d.as_nanos()))
            }
        };
        self.confirm("nack", payload).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        self.confirm("in-progress ack (+WPI)", Bytes::from_static(b"+WPI")).await
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.settle();
        // Dropped unsettled: hand the message back at once rather than after the ack wait.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let reply = self.reply.clone();
            runtime.spawn(async move {
                let _ = client.publish(reply, Bytes::from_static(b"-NAK")).await;
            });
        }
    }
}
