//! The consumer's librdkafka context: rebalances, and a queue of its own per assigned partition.
//!
//! Each assigned partition's messages are split into a partition queue before the partition is
//! assigned, so the poll thread takes messages only when it has room for them (flow control
//! without pausing, which would drop what was prefetched) while the consumer queue keeps serving
//! rebalances and errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::logs;
use super::state::Shared;

/// The consumer as the poll thread holds it.
pub(super) type KafkaConsumer = BaseConsumer<PumpContext>;

/// Rebalance handling and the partition queues of one consumer.
pub(super) struct PumpContext {
    shared: Arc<Shared>,
    /// The consumer itself, to split partition queues (set once it exists).
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// A queue per assigned partition. Each holds the consumer: [`PumpContext::drop_queues`] before
    /// the consumer can be dropped.
    queues: Mutex<BTreeMap<i32, PartitionQueue<PumpContext>>>,
}

impl PumpContext {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        PumpContext {
            shared,
            consumer: OnceLock::new(),
            queues: Mutex::new(BTreeMap::new()),
        }
    }

    /// Tells the context which consumer it belongs to.
    pub(super) fn attach(&self, consumer: &Arc<KafkaConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// The partition queues.
    pub(super) fn queues(&self) -> MutexGuard<'_, BTreeMap<i32, PartitionQueue<PumpContext>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every partition queue (and with them their hold on the consumer).
    pub(super) fn drop_queues(&self) {
        let queues = std::mem::take(&mut *self.queues());
        drop(queues);
    }

    fn ours(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.shared.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Splits the queues of partitions about to be assigned, each waking the poll thread when
    /// messages arrive.
    fn split(&self, partitions: &[i32]) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut queues = self.queues();
        for &p in partitions {
            if let Some(mut queue) = consumer.split_partition_queue(&self.shared.topic, p) {
                let shared = self.shared.clone();
                queue.set_nonempty_callback(move || shared.wake());
                queues.insert(p, queue);
            }
        }
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
        match rebalance {
            Rebalance::Assign(tpl) => self.split(&self.ours(tpl)),
            Rebalance::Revoke(tpl) => {
                let partitions = self.ours(tpl);
                let lost = consumer.assignment_lost();
                let positions = self.shared.revoke(&partitions, !lost);
                tracing::debug!(topic = %self.shared.topic, ?partitions, lost, ?positions,
                    "partitions revoked");
                if !lost {
                    commit(consumer, &self.shared.topic, &positions);
                }
                let mut queues = self.queues();
                for p in partitions {
                    queues.remove(&p);
                }
            }
            Rebalance::Error(_) => {}
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
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.shared.topic, error = %e, "consumer group rebalance failed");
            }
        }
    }
}

/// Stores and synchronously commits `positions` of `topic`.
pub(super) fn commit(consumer: &KafkaConsumer, topic: &str, positions: &[(i32, i64)]) {
    let Some(tpl) = partition_list(topic, positions) else {
        return;
    };
    // Stored first, so librdkafka's own commit on unassign commits the same positions.
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(topic, error = %e, "cannot store offsets before committing");
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        tracing::warn!(topic, error = %e, ?positions, "cannot commit offsets; messages after the \
            last committed offset will be delivered again");
    }
}

/// `positions` of `topic` as a partition list; `None` when there are none.
pub(super) fn partition_list(topic: &str, positions: &[(i32, i64)]) -> Option<TopicPartitionList> {
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
