//! What one consumer holds, shared by its poll thread, its [`Consumer`](crate::Consumer) handle and
//! every delivery it handed out: the partitions assigned to it, an offset tracker for each, and the
//! leases of handed-out messages.
//!
//! Every partition assignment gets a new generation number. A delivery remembers the generation it
//! came from, so an ack that arrives after its partition was taken away (and maybe given back) is
//! recognised and ignored instead of marking an unrelated offset done.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::offsets::{PartitionOffsets, State};

/// Names one handed-out message: which partition assignment it came from and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) offset: i64,
}

/// One assigned partition.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) generation: u64,
    pub(super) offsets: PartitionOffsets,
    /// When each handed-out message's lease ends (a rebalance waits for it until then).
    leases: HashMap<i64, Instant>,
    /// Being taken away: hand out nothing more from it.
    revoking: bool,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) claims: HashMap<i32, Claim>,
    next_generation: u64,
    /// The consumer was closed (or dropped): fetch nothing more.
    pub(super) closing: bool,
    /// The bus is closing: stop now, commit what is done, leave the group.
    pub(super) shutdown: bool,
    /// A partition assignment has arrived at least once.
    pub(super) assigned: bool,
    /// Something for the poll thread to look at (messages arrived, a settle, a close).
    wake: bool,
    /// The poll thread waits for room: wake it when no more than this many are in flight.
    wake_at: Option<usize>,
    /// A rebalance waits for settles.
    revoking: bool,
    /// Partitions whose end this consumer reached (finite consumers).
    pub(super) eof: HashSet<i32>,
    /// Per partition, the highest offset of a copy this consumer re-published (a nack): a finite
    /// consumer is not at its end until it fetched past it.
    pub(super) expected: HashMap<i32, i64>,
}

impl Inner {
    /// Starts tracking `partition` under a new generation (replacing any old tracker).
    pub(super) fn claim(&mut self, partition: i32) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.claims.insert(
            partition,
            Claim {
                generation,
                offsets: PartitionOffsets::default(),
                leases: HashMap::new(),
                revoking: false,
            },
        );
        self.eof.remove(&partition);
        generation
    }

    /// The tracker of the assignment `ticket` came from, if it is still current.
    pub(super) fn current(&mut self, ticket: &Ticket) -> Option<&mut Claim> {
        self.claims
            .get_mut(&ticket.partition)
            .filter(|c| c.generation == ticket.generation)
    }

    /// Messages queued or handed out, over every partition.
    pub(super) fn in_flight(&self) -> usize {
        self.claims.values().map(|c| c.offsets.in_flight()).sum()
    }

    /// Whether a finite consumer has reached the end of what its partitions hold.
    pub(super) fn at_end(&self) -> bool {
        self.assigned
            && self.claims.iter().all(|(p, c)| {
                self.eof.contains(p)
                    && c.offsets.in_flight() == 0
                    && c.offsets.delayed() == 0
                    && self
                        .expected
                        .get(p)
                        .map_or(true, |&o| c.offsets.end().is_some_and(|e| e > o))
            })
    }
}

/// The state shared by one consumer's poll thread, handle and deliveries.
#[derive(Debug)]
pub(super) struct Shared {
    /// The topic.
    pub(super) topic: String,
    /// The taskbus group (written on the copies a nack re-publishes).
    pub(super) group: String,
    /// How long a handed-out message is leased before a rebalance may take it away, renewed by
    /// `in_progress`.
    pub(super) lease: Duration,
    /// The longest a rebalance waits, leases renewed or not.
    cap: Duration,
    inner: Mutex<Inner>,
    /// Signalled whenever a message is settled or the consumer is closing.
    changed: Condvar,
}

impl Shared {
    pub(super) fn new(topic: &str, group: &str, lease: Duration, cap: Duration) -> Shared {
        Shared {
            topic: topic.to_owned(),
            group: group.to_owned(),
            lease,
            cap,
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever waits for a settle (a rebalance, the poll thread).
    pub(super) fn notify(&self) {
        self.lock().wake = true;
        self.changed.notify_all();
    }

    /// Wakes the poll thread: messages or events arrived (called by librdkafka's threads).
    pub(super) fn wake(&self) {
        self.notify();
    }

    /// The poll thread's nap: returns at once when woken since the last nap, else within `timeout`.
    /// With `wake_at`, settles wake it only once no more than that many messages are in flight.
    pub(super) fn sleep(&self, timeout: Duration, wake_at: Option<usize>) {
        let mut inner = self.lock();
        inner.wake_at = wake_at;
        if !inner.wake {
            inner = self.wait(inner, timeout);
        }
        inner.wake = false;
        inner.wake_at = None;
    }

    /// Waits up to `timeout` for a settle.
    pub(super) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, Inner>,
        timeout: Duration,
    ) -> MutexGuard<'a, Inner> {
        self.changed
            .wait_timeout(guard, timeout)
            .map_or_else(|e| e.into_inner().0, |(g, _)| g)
    }

    /// Moves a queued message to the application; false when its partition was taken away since.
    pub(super) fn hand_out(&self, ticket: &Ticket) -> bool {
        let mut inner = self.lock();
        let Some(claim) = inner.current(ticket) else {
            return false;
        };
        if claim.revoking || !claim.offsets.set(ticket.offset, State::Queued, State::Out) {
            return false;
        }
        claim
            .leases
            .insert(ticket.offset, Instant::now() + self.lease);
        true
    }

    /// Marks a handed-out message done. False when its partition was taken away since (the message
    /// then goes to the partition's next owner again).
    pub(super) fn done(&self, ticket: &Ticket) -> bool {
        let mut inner = self.lock();
        let settled = inner.current(ticket).is_some_and(|claim| {
            claim.leases.remove(&ticket.offset);
            claim.offsets.done(ticket.offset)
        });
        self.settled(inner);
        settled
    }

    /// Wakes whoever may be waiting for a settle: a rebalance, a closing consumer, or the poll
    /// thread once enough room was made (not on every settle: one wake takes a batch).
    fn settled(&self, mut inner: MutexGuard<'_, Inner>) {
        let room = inner.wake_at.is_some_and(|at| inner.in_flight() <= at);
        if room || inner.revoking || inner.closing {
            inner.wake = true;
            drop(inner);
            self.changed.notify_all();
        }
    }

    /// Gives up on a handed-out message without settling it: it stays uncommitted, so the
    /// partition's next owner gets it.
    pub(super) fn abandon(&self, ticket: &Ticket) {
        let mut inner = self.lock();
        if let Some(claim) = inner.current(ticket) {
            claim.leases.remove(&ticket.offset);
            claim
                .offsets
                .set(ticket.offset, State::Out, State::Abandoned);
        }
        self.settled(inner);
    }

    /// Renews a handed-out message's lease.
    pub(super) fn extend(&self, ticket: &Ticket) {
        let mut inner = self.lock();
        let until = Instant::now() + self.lease;
        if let Some(lease) = inner
            .current(ticket)
            .and_then(|claim| claim.leases.get_mut(&ticket.offset))
        {
            *lease = until;
        }
    }

    /// Records that a nack re-published a copy at `offset` of `partition`.
    pub(super) fn expect(&self, partition: i32, offset: i64) {
        let mut inner = self.lock();
        let e = inner.expected.entry(partition).or_insert(offset);
        *e = (*e).max(offset);
    }

    /// Takes `partitions` away: hands out nothing more from them, waits (when `wait`) until each
    /// handed-out message of theirs is settled or its lease has ended, then forgets them. Returns
    /// the position to commit for each partition that has one.
    pub(super) fn revoke(&self, partitions: &[i32], wait: bool) -> Vec<(i32, i64)> {
        let mut inner = self.lock();
        inner.revoking = true;
        for p in partitions {
            if let Some(claim) = inner.claims.get_mut(p) {
                claim.revoking = true;
            }
        }
        let started = Instant::now();
        loop {
            let now = Instant::now();
            let last_lease = partitions
                .iter()
                .filter_map(|p| inner.claims.get(p))
                .flat_map(|c| c.leases.values())
                .copied()
                .max();
            match last_lease {
                Some(until) if wait && until > now && !inner.shutdown => {
                    let until = until.min(started + self.cap);
                    if until <= now {
                        break;
                    }
                    inner = self.wait(inner, (until - now).min(Duration::from_millis(100)));
                }
                _ => break,
            }
        }
        inner.revoking = false;
        let unfinished: usize = partitions
            .iter()
            .filter_map(|p| inner.claims.get(p))
            .map(|c| c.offsets.out())
            .sum();
        if unfinished > 0 {
            tracing::warn!(
                topic = %self.topic, group = %self.group, unfinished, waited = ?started.elapsed(),
                "partitions taken away by a rebalance while deliveries were unfinished; their \
                 messages go to the partitions' next owner"
            );
        }
        partitions
            .iter()
            .filter_map(|p| {
                let claim = inner.claims.remove(p)?;
                inner.eof.remove(p);
                Some((*p, claim.offsets.commit_position()?))
            })
            .collect()
    }

    /// The commit positions that moved since last asked.
    pub(super) fn advanced(&self) -> Vec<(i32, i64)> {
        let mut inner = self.lock();
        inner
            .claims
            .iter_mut()
            .filter_map(|(p, c)| Some((*p, c.offsets.advance()?)))
            .collect()
    }

    /// The commit position of every partition held (for the final commit).
    pub(super) fn positions(&self) -> Vec<(i32, i64)> {
        let inner = self.lock();
        inner
            .claims
            .iter()
            .filter_map(|(p, c)| Some((*p, c.offsets.commit_position()?)))
            .collect()
    }
}
