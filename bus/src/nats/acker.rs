//! Settling one JetStream delivery: `+ACK` (confirmed by the server when `confirm_acks`), and
//! `-NAK [{"delay":…}]` and `+WPI`, always confirmed.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::flow::Flow;

use crate::{Acker, BusError};

/// What the ackers of one consumer share.
pub(super) struct Settler {
    pub(super) client: Client,
    pub(super) reconnects: watch::Receiver<u64>,
    pub(super) topic: Arc<str>,
    pub(super) flow: Arc<Flow>,
    /// Whether `ack` waits for the server's confirmation (`confirm_acks`).
    pub(super) confirm_acks: bool,
}

impl Settler {
    /// Sends `payload` to the ack subject `reply` and waits for the server's confirmation.
    /// Settling is idempotent, so when the connection is replaced while waiting (the request may
    /// have died with the old one) it is sent again on the new one.
    async fn confirm(&self, reply: &Subject, what: &str, payload: Bytes) -> Result<(), BusError> {
        let mut reconnects = self.reconnects.clone();
        reconnects.borrow_and_update();
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            let request = self.client.request(reply.clone(), payload.clone());
            tokio::select! {
                result = request => break result.map(drop),
                Ok(()) = reconnects.changed(), if attempts < 3 => {}
            }
        };
        result.map_err(|e| self.error(what, e))
    }

    /// Sends `payload` to the ack subject `reply` without waiting. While the connection is down the
    /// client keeps it and sends it once reconnected.
    async fn send(&self, reply: &Subject, what: &str, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(reply.clone(), payload)
            .await
            .map_err(|e| self.error(what, e))
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> BusError {
        BusError::broker(
            format!("{what} of a message from topic {:?}", self.topic),
            format!("{e}; the message will be delivered again after its ack wait"),
        )
    }
}

/// Settles one message through its JetStream ack subject.
pub(super) struct NatsAcker {
    settler: Arc<Settler>,
    reply: Subject,
    /// When the delivery was handed out.
    taken: Instant,
    settled: bool,
}

impl NatsAcker {
    /// An acker for the message whose ack subject is `reply`; the caller has already counted it in
    /// the settler's flow with [`Flow::take`].
    pub(super) fn new(settler: Arc<Settler>, reply: Subject) -> Self {
        NatsAcker {
            settler,
            reply,
            taken: Instant::now(),
            settled: false,
        }
    }

    fn settle(&mut self) {
        if !self.settled {
            self.settled = true;
            self.settler.flow.release(self.taken.elapsed());
        }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settle();
        let ack = Bytes::from_static(b"+ACK");
        if self.settler.confirm_acks {
            self.settler.confirm(&self.reply, "ack", ack).await
        } else {
            self.settler.send(&self.reply, "ack", ack).await
        }
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        self.settle();
        let payload = match delay.filter(|d| !d.is_zero()) {
            None => Bytes::from_static(b"-NAK"),
            Some(d) => {
                self.settler.flow.nacked_with_delay(d);
                Bytes::from(format!("-NAK {{\"delay\":{}}}", d.as_nanos()))
            }
        };
        self.settler.confirm(&self.reply, "nack", payload).await
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        let wpi = Bytes::from_static(b"+WPI");
        self.settler
            .confirm(&self.reply, "in-progress ack (+WPI)", wpi)
            .await
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
            let client = self.settler.client.clone();
            let reply = self.reply.clone();
            runtime.spawn(async move {
                let _ = client.publish(reply, Bytes::from_static(b"-NAK")).await;
            });
        }
    }
}

/// The delivery count in a JetStream ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>` or, with a domain and
/// account hash, `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.…`.
pub(super) fn delivery_count(reply: &str) -> Option<u32> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let at = match rest.split('.').count() {
        7 => 2,
        n if n >= 9 => 4,
        _ => return None,
    };
    rest.split('.').nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::delivery_count;

    #[test]
    fn reads_the_delivery_count_of_both_ack_subject_forms() {
        assert_eq!(
            delivery_count("$JS.ACK.s.c.3.10.7.1700000000000000000.0"),
            Some(3)
        );
        assert_eq!(
            delivery_count("$JS.ACK.dom.hash.s.c.2.10.7.1700000000000000000.0.tok"),
            Some(2)
        );
        assert_eq!(delivery_count("_INBOX.x"), None);
    }
}
