//! The poll thread of one consumer.
//!
//! A Kafka consumer must be polled all the time: rebalances are served inside `poll`, and a member
//! that stops polling is thrown out of its group. So each consumer has a thread of its own that
//! polls, whether or not the application is asking for messages. It
//!
//! - tracks every fetched offset ([`super::offsets`]) and queues the message for the consumer
//!   handle, or holds it back until its not-before time (a nack with a delay), or skips it (a
//!   re-published copy meant for another group);
//! - stores, for the periodic auto-commit, each partition's offset up to the lowest message not yet
//!   done;
//! - takes messages from its partition queues ([`super::context`]) only while the application
//!   holds fewer than `max_in_flight`; the rest wait, prefetched, in librdkafka;
//! - on a rebalance, stops handing out messages of revoked partitions, waits for the handed-out ones
//!   while their leases last, and commits what is done before letting them go;
//! - once its consumer is closed and nothing it handed out is unsettled (or at once when the bus
//!   closes), commits what is done and leaves the group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::sync::mpsc::UnboundedSender;

use super::context::{commit, partition_list, KafkaConsumer};
use super::headers::Redelivery;
use super::offsets::{Seen, State};
use super::state::{Shared, Ticket};

/// What the poll thread hands to the consumer handle.
pub(super) enum Item {
    /// A message to hand out.
    Message(Fetched),
    /// A finite consumer reached the end of its partitions.
    End,
    /// The consumer failed for good; the reason.
    Failed(String),
}

/// A fetched message.
pub(super) struct Fetched {
    pub(super) ticket: Ticket,
    pub(super) payload: Bytes,
    pub(super) key: Option<Bytes>,
    /// Deliveries before this one (from the headers of a re-published copy).
    pub(super) deliveries: u32,
}

/// How many messages to take from one partition queue before looking at the next.
const BATCH: usize = 64;

/// The longest nap of the poll thread (it is woken sooner by arrivals and settles).
const IDLE: Duration = Duration::from_millis(100);

/// How often finished offsets are stored for the auto-commit (the commit itself runs every
/// `commit_interval`; a rebalance or a close commits the latest positions directly).
const STORE_EVERY: Duration = Duration::from_millis(20);

/// The poll loop of one consumer.
pub(super) struct Pump {
    consumer: Arc<KafkaConsumer>,
    shared: Arc<Shared>,
    tx: UnboundedSender<Item>,
    max_in_flight: usize,
    finite: bool,
    /// Messages held back until their not-before time, by (due, sequence).
    delayed: BTreeMap<(Instant, u64), Fetched>,
    /// When offsets were last stored.
    stored_at: Instant,
    sequence: u64,
    ended: bool,
}

/// What one look at the queues found.
#[derive(Default)]
struct Round {
    /// Something arrived or happened.
    busy: bool,
    /// The consumer failed for good.
    failed: bool,
}

impl Pump {
    pub(super) fn new(
        consumer: Arc<KafkaConsumer>,
        shared: Arc<Shared>,
        tx: UnboundedSender<Item>,
        max_in_flight: usize,
        finite: bool,
    ) -> Pump {
        Pump {
            consumer,
            shared,
            tx,
            max_in_flight: max_in_flight.max(1),
            finite,
            delayed: BTreeMap::new(),
            stored_at: Instant::now(),
            sequence: 0,
            ended: false,
        }
    }

    /// Polls until the consumer is closed and settled, or the bus closes; then commits and leaves.
    pub(super) fn run(mut self) {
        loop {
            let (in_flight, closing) = {
                let inner = self.shared.lock();
                if inner.shutdown || (inner.closing && inner.in_flight() == 0) {
                    break;
                }
                if self.finite && !self.ended && self.delayed.is_empty() && inner.at_end() {
                    self.ended = true;
                    let _ = self.tx.send(Item::End);
                }
                (inner.in_flight(), inner.closing)
            };
            self.store();
            self.release_due();
            let room = if closing {
                0
            } else {
                self.max_in_flight.saturating_sub(in_flight)
            };
            let mut round = self.events();
            if room > 0 {
                let taken = self.take(room);
                round.busy |= taken.busy;
                round.failed |= taken.failed;
            }
            if round.failed {
                break;
            }
            if !round.busy {
                let idle = self.next_due().map_or(IDLE, |d| d.min(IDLE));
                // Full: wake when a quarter of the room is free again, to take a batch.
                let full = room == 0 && !closing;
                let wake_at = full.then(|| self.max_in_flight - self.max_in_flight.div_ceil(4));
                self.shared.sleep(idle, wake_at);
            }
        }
        self.finish();
    }

    /// Serves the consumer queue: rebalances, errors, and any message not split off.
    fn events(&mut self) -> Round {
        let mut round = Round::default();
        let consumer = self.consumer.clone();
        while let Some(polled) = consumer.poll(Duration::ZERO) {
            round.busy = true;
            if self.handle(polled) {
                round.failed = true;
                break;
            }
        }
        round
    }

    /// Takes up to `room` messages from the partition queues, a batch from each in turn.
    fn take(&mut self, mut room: usize) -> Round {
        let mut round = Round::default();
        let consumer = self.consumer.clone();
        let queues = consumer.context().queues();
        let mut more = true;
        while room > 0 && more {
            more = false;
            for queue in queues.values() {
                for _ in 0..BATCH.min(room) {
                    let Some(polled) = queue.poll(Duration::ZERO) else {
                        break;
                    };
                    round.busy = true;
                    more = true;
                    room -= 1;
                    if self.handle(polled) {
                        round.failed = true;
                        return round;
                    }
                }
                if room == 0 {
                    break;
                }
            }
        }
        round
    }

    /// Handles one poll result; true when the consumer failed for good.
    fn handle(&mut self, polled: KafkaResult<BorrowedMessage<'_>>) -> bool {
        match polled {
            Ok(message) => {
                if let Some((due, fetched)) = self.fetched(&message) {
                    self.sequence += 1;
                    self.delayed.insert((due, self.sequence), fetched);
                }
                false
            }
            Err(KafkaError::PartitionEOF(p)) => {
                self.shared.lock().eof.insert(p);
                false
            }
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                let _ = self.tx.send(Item::Failed(e.to_string()));
                true
            }
            Err(e) => {
                tracing::warn!(topic = %self.shared.topic, error = %e, "error while consuming");
                false
            }
        }
    }

    /// Handles one fetched message; returns it with its due time when it is to be held back.
    fn fetched(&self, message: &BorrowedMessage<'_>) -> Option<(Instant, Fetched)> {
        let (partition, offset) = (message.partition(), message.offset());
        let redelivery = Redelivery::read(message.headers());
        tracing::trace!(topic = %self.shared.topic, partition, offset, ?redelivery, "fetched");
        let mut inner = self.shared.lock();
        if inner.closing || inner.shutdown {
            // Not tracked, so never committed: the partition's next owner gets it.
            return None;
        }
        inner.eof.remove(&partition);
        let claim = inner.claims.get_mut(&partition)?;
        let mut seen = claim.offsets.fetched(offset);
        if seen == Seen::Rewound {
            tracing::warn!(topic = %self.shared.topic, partition, offset,
                "the partition's log went back below the committed offset (was the topic recreated, \
                 or did the broker lose data?); tracking it afresh");
            inner.claim(partition);
            seen = inner.claims.get_mut(&partition)?.offsets.fetched(offset);
        }
        let claim = inner.claims.get_mut(&partition)?;
        if seen != Seen::New {
            return None;
        }
        if !redelivery.is_for(&self.shared.group) {
            claim.offsets.done(offset);
            return None;
        }
        let fetched = Fetched {
            ticket: Ticket {
                partition,
                generation: claim.generation,
                offset,
            },
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            key: message.key().map(Bytes::copy_from_slice),
            deliveries: redelivery.deliveries,
        };
        if let Some(wait) = redelivery.wait() {
            claim.offsets.set(offset, State::Queued, State::Delayed);
            return Some((Instant::now() + wait, fetched));
        }
        // Sent under the lock: once `closing` is set, nothing more enters the queue.
        let _ = self.tx.send(Item::Message(fetched));
        None
    }

    /// Queues the held-back messages whose time has come.
    fn release_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let fetched = entry.remove();
            let mut inner = self.shared.lock();
            let closing = inner.closing;
            let queued = inner.current(&fetched.ticket).is_some_and(|claim| {
                !closing
                    && claim
                        .offsets
                        .set(fetched.ticket.offset, State::Delayed, State::Queued)
            });
            if queued {
                let _ = self.tx.send(Item::Message(fetched));
            }
        }
    }

    fn next_due(&self) -> Option<Duration> {
        let (due, _) = self.delayed.keys().next()?;
        Some(due.saturating_duration_since(Instant::now()))
    }

    /// Stores the commit positions that moved, for the next auto-commit.
    fn store(&mut self) {
        if self.stored_at.elapsed() < STORE_EVERY {
            return;
        }
        self.stored_at = Instant::now();
        let Some(tpl) = partition_list(&self.shared.topic, &self.shared.advanced()) else {
            return;
        };
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(topic = %self.shared.topic, error = %e, "cannot store offsets");
        }
    }

    /// Commits what is done and leaves the group.
    fn finish(self) {
        let positions = self.shared.positions();
        commit(&self.consumer, &self.shared.topic, &positions);
        tracing::debug!(topic = %self.shared.topic, group = %self.shared.group, ?positions,
            "consumer leaves its group");
        // The partition queues hold the consumer; once they are gone, dropping it leaves the group
        // (its revoke callback commits once more).
        self.consumer.context().drop_queues();
        drop(self.consumer);
    }
}
