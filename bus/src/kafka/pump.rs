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
//! - pauses its partitions while the application holds `max_in_flight` messages, and resumes them
//!   at half that;
//! - on a rebalance, stops handing out messages of revoked partitions, waits for the handed-out ones
//!   while their leases last, and commits what is done before letting them go;
//! - once its consumer is closed and nothing it handed out is unsettled (or at once when the bus
//!   closes), commits what is done and leaves the group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;

use super::headers::Redelivery;
use super::logs;
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

/// The consumer's context: rebalances and logs.
pub(super) struct PumpContext {
    shared: Arc<Shared>,
}

impl PumpContext {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        PumpContext { shared }
    }

    fn ours(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.shared.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for PumpContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        logs::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        logs::error(&error, reason);
    }
}

impl ConsumerContext for PumpContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = self.ours(tpl);
        let lost = consumer.assignment_lost();
        let positions = self.shared.revoke(&partitions, !lost);
        tracing::debug!(topic = %self.shared.topic, ?partitions, lost, ?positions, "partitions revoked");
        if !lost {
            commit(consumer, &self.shared.topic, &positions);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.ours(tpl);
                tracing::debug!(topic = %self.shared.topic, ?partitions, "partitions assigned");
                let mut inner = self.shared.lock();
                for p in partitions {
                    if !inner.claims.contains_key(&p) {
                        inner.claim(p);
                    }
                }
                inner.assigned = true;
                inner.assignments += 1;
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.shared.topic, error = %e, "consumer group rebalance failed");
            }
        }
    }
}

/// Stores and synchronously commits `positions` of `topic`.
fn commit(consumer: &BaseConsumer<PumpContext>, topic: &str, positions: &[(i32, i64)]) {
    let Some(tpl) = partition_list(topic, positions) else {
        return;
    };
    // Stored first, so librdkafka's own commit on unassign commits the same positions.
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(topic, error = %e, "cannot store offsets before committing");
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(topic, error = %e, ?positions, "cannot commit offsets; messages after the last \
            committed offset will be delivered again");
    }
}

fn partition_list(topic: &str, positions: &[(i32, i64)]) -> Option<TopicPartitionList> {
    if positions.is_empty() {
        return None;
    }
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for &(p, o) in positions {
        // Cannot fail: an absolute offset is always representable.
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
    }
    Some(tpl)
}

/// The poll loop of one consumer.
pub(super) struct Pump {
    consumer: BaseConsumer<PumpContext>,
    shared: Arc<Shared>,
    tx: UnboundedSender<Item>,
    max_in_flight: usize,
    finite: bool,
    /// Messages held back until their not-before time, by (due, sequence).
    delayed: BTreeMap<(Instant, u64), Fetched>,
    sequence: u64,
    paused: bool,
    /// The assignment count when pausing was last applied.
    applied: u64,
    ended: bool,
}

impl Pump {
    pub(super) fn new(
        consumer: BaseConsumer<PumpContext>,
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
            sequence: 0,
            paused: false,
            applied: 0,
            ended: false,
        }
    }

    /// Polls until the consumer is closed and settled, or the bus closes; then commits and leaves.
    pub(super) fn run(mut self) {
        loop {
            let (in_flight, closing, assignments) = {
                let inner = self.shared.lock();
                if inner.shutdown || (inner.closing && inner.in_flight() == 0) {
                    break;
                }
                if self.finite && !self.ended && self.delayed.is_empty() && inner.at_end() {
                    self.ended = true;
                    let _ = self.tx.send(Item::End);
                }
                (inner.in_flight(), inner.closing, inner.assignments)
            };
            self.store();
            self.release_due();
            let pause = closing
                || in_flight >= self.max_in_flight
                || (self.paused && in_flight > self.max_in_flight / 2);
            self.flow(pause, assignments);
            let timeout = if pause {
                // Nothing to fetch: wait for a settle instead, then serve rebalances.
                let inner = self.shared.lock();
                drop(self.shared.wait(inner, Duration::from_millis(50)));
                Duration::ZERO
            } else {
                self.next_due().map_or(Duration::from_millis(100), |d| {
                    d.min(Duration::from_millis(100))
                })
            };
            let held = match self.consumer.poll(timeout) {
                None => None,
                Some(Ok(message)) => self.fetched(&message),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.shared.lock().eof.insert(p);
                    None
                }
                Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => {
                    let _ = self.tx.send(Item::Failed(e.to_string()));
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.shared.topic, error = %e, "error while consuming");
                    None
                }
            };
            if let Some((due, fetched)) = held {
                self.sequence += 1;
                self.delayed.insert((due, self.sequence), fetched);
            }
        }
        self.finish();
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
    fn store(&self) {
        let Some(tpl) = partition_list(&self.shared.topic, &self.shared.advanced()) else {
            return;
        };
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(topic = %self.shared.topic, error = %e, "cannot store offsets");
        }
    }

    /// Pauses or resumes fetching (again after every new assignment).
    fn flow(&mut self, pause: bool, assignments: u64) {
        if pause == self.paused && assignments == self.applied {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.paused = pause;
                self.applied = assignments;
            }
            Err(e) => {
                tracing::debug!(topic = %self.shared.topic, error = %e, pause, "cannot pause or resume");
            }
        }
    }

    /// Commits what is done and leaves the group.
    fn finish(self) {
        let positions = self.shared.positions();
        commit(&self.consumer, &self.shared.topic, &positions);
        tracing::debug!(topic = %self.shared.topic, group = %self.shared.group, ?positions, "consumer leaves its group");
        // Dropping the consumer leaves the group (its revoke callback commits once more).
        drop(self.consumer);
    }
}
