//! Settling the deliveries of one consumer channel: acks batched into multiple-acks, never acking a
//! delivery before its caller did.
//!
//! A multiple-ack of delivery tag `T` acks every delivery of the channel up to `T`. RabbitMQ numbers
//! the deliveries of a channel 1, 2, 3 … (one consumer per channel here), so the settler keeps the
//! lowest tag not yet settled by its caller; every ack below it can go out as part of one
//! multiple-ack, the others go out as single acks. Batches form by themselves: whatever arrives
//! while the previous batch is being written goes out together. (Were tags ever not consecutive,
//! the lowest unsettled tag would stop moving and every ack would go out single: slower, still
//! correct.)

use std::collections::BTreeSet;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};

/// A message to the settler of one channel.
pub(crate) enum Settle {
    /// The caller acked it.
    Ack(u64),
    /// Hand it out again at once (a `basic.nack` with requeue): it was dropped unsettled.
    Requeue(u64),
    /// Answer once everything sent before is written.
    Flush(oneshot::Sender<()>),
}

/// The most messages taken into one batch.
const MAX_BATCH: usize = 4096;

/// Starts the settler of `channel`, whose deliveries come from `queue`. It ends, closing the
/// channel, when every sender is gone: the consumer and every delivery it handed out.
pub(crate) fn spawn(channel: Channel, queue: String) -> mpsc::UnboundedSender<Settle> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(channel, queue, rx));
    tx
}

async fn run(channel: Channel, queue: String, mut rx: mpsc::UnboundedReceiver<Settle>) {
    let mut settler = Settler {
        channel,
        queue,
        lowest_unsettled: 1,
        settled: BTreeSet::new(),
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
    /// Every tag below this one was settled by its caller.
    lowest_unsettled: u64,
    /// Tags settled by their callers at or above `lowest_unsettled`.
    settled: BTreeSet<u64>,
}

impl Settler {
    async fn flush(&mut self, batch: &mut Vec<Settle>) {
        let mut acks = Vec::new();
        let mut requeues = Vec::new();
        let mut flushes = Vec::new();
        for settle in batch.drain(..) {
            match settle {
                Settle::Ack(tag) => {
                    self.settled.insert(tag);
                    acks.push(tag);
                }
                Settle::Requeue(tag) => {
                    self.settled.insert(tag);
                    requeues.push(tag);
                }
                Settle::Flush(done) => flushes.push(done),
            }
        }
        for tag in requeues {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            let sent = self.channel.basic_nack(tag, options).await;
            self.report(sent, "requeue");
        }
        while self.settled.remove(&self.lowest_unsettled) {
            self.lowest_unsettled += 1;
        }
        acks.sort_unstable();
        let covered = acks.partition_point(|tag| *tag < self.lowest_unsettled);
        if covered > 0 {
            let options = BasicAckOptions {
                multiple: covered > 1,
            };
            let sent = self.channel.basic_ack(acks[covered - 1], options).await;
            self.report(sent, "ack");
        }
        for tag in &acks[covered..] {
            let sent = self
                .channel
                .basic_ack(*tag, BasicAckOptions::default())
                .await;
            self.report(sent, "ack");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    fn report(&self, sent: lapin::Result<()>, what: &str) {
        if let Err(e) = sent {
            tracing::debug!(queue = %self.queue, error = %e,
                "cannot {what} a delivery: its channel is gone, so RabbitMQ delivers it again");
        }
    }
}
