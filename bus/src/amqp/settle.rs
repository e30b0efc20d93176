//! Settling deliveries of one consumer channel: acks batched into multiple-acks, never acking a
//! delivery before its caller did.
//!
//! A multiple-ack of delivery tag `T` acks every delivery of the channel up to `T`. Tags grow in the
//! order deliveries are handed out, so one multiple-ack is safe exactly when every delivery handed out
//! before `T` has been settled by its caller. The settler task keeps the set of deliveries handed out
//! and not yet settled; each batch of acks becomes one multiple-ack for the acks below the oldest
//! unsettled delivery, and single acks for the others. Batches form by themselves: whatever arrives
//! while the previous batch is being written goes out together.

use std::collections::BTreeSet;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

use crate::BusError;

/// Where the caller of an ack or nack learns that it went out.
pub(crate) type Done = oneshot::Sender<Result<(), BusError>>;

/// A message to the settler of one channel.
pub(crate) enum Settle {
    /// A delivery was handed to a caller: no multiple-ack may cover it until it is settled.
    Handed(u64),
    /// The caller acked it.
    Ack(u64, Done),
    /// Hand it out again at once (a `basic.nack` with requeue): it was dropped unsettled.
    Requeue(u64),
}

/// Starts the settler of `channel`, whose deliveries come from `queue`. It ends, closing the
/// channel, when every sender is gone: the consumer and every delivery it handed out.
pub(crate) fn spawn(channel: Channel, queue: String) -> mpsc::UnboundedSender<Settle> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(channel, queue, rx));
    tx
}

/// The most messages taken into one batch.
const MAX_BATCH: usize = 4096;

async fn run(channel: Channel, queue: String, mut rx: mpsc::UnboundedReceiver<Settle>) {
    let mut settler = Settler {
        channel,
        queue,
        handed: BTreeSet::new(),
    };
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        settler.flush(&mut batch).await;
    }
    if settler.channel.status().connected() {
        let _ = settler.channel.close(200, "every delivery settled").await;
    }
}

struct Settler {
    channel: Channel,
    queue: String,
    /// Tags handed out and not settled yet.
    handed: BTreeSet<u64>,
}

impl Settler {
    async fn flush(&mut self, batch: &mut Vec<Settle>) {
        let mut acks = Vec::new();
        let mut requeues = Vec::new();
        for settle in batch.drain(..) {
            match settle {
                Settle::Handed(tag) => {
                    self.handed.insert(tag);
                }
                Settle::Ack(tag, done) => {
                    self.handed.remove(&tag);
                    acks.push((tag, done));
                }
                Settle::Requeue(tag) => {
                    self.handed.remove(&tag);
                    requeues.push(tag);
                }
            }
        }
        for tag in requeues {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            if let Err(e) = self.channel.basic_nack(tag, options).await {
                tracing::debug!(queue = %self.queue, error = %e,
                    "requeueing a dropped delivery; its channel is gone, which requeued it");
            }
        }
        if acks.is_empty() {
            return;
        }
        acks.sort_unstable_by_key(|(tag, _)| *tag);
        let oldest_unsettled = self.handed.first().copied().unwrap_or(u64::MAX);
        let split = acks.partition_point(|(tag, _)| *tag < oldest_unsettled);
        let singles = acks.split_off(split);
        if let Some((last, _)) = acks.last() {
            let options = BasicAckOptions {
                multiple: acks.len() > 1,
            };
            let sent = self.channel.basic_ack(*last, options).await;
            self.report(&sent, "ack", acks.into_iter().map(|(_, done)| done));
        }
        for (tag, done) in singles {
            let sent = self
                .channel
                .basic_ack(tag, BasicAckOptions::default())
                .await;
            self.report(&sent, "ack", std::iter::once(done));
        }
    }

    fn report(&self, sent: &lapin::Result<()>, what: &str, dones: impl Iterator<Item = Done>) {
        for done in dones {
            let result = match sent {
                Ok(()) => Ok(()),
                Err(e) => Err(BusError::broker(
                    format!("{what} of a delivery from queue {:?}", self.queue),
                    format!(
                        "{e}; its channel to RabbitMQ is gone, so RabbitMQ delivers the message again"
                    ),
                )),
            };
            let _ = done.send(result);
        }
    }
}
