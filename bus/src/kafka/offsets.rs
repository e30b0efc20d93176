//! Which offsets of one partition are still unfinished, and how far the group's committed offset may
//! go.
//!
//! Kafka has no per-message ack: a group commits one offset per partition, "everything below this is
//! done". Tasks finish out of order, so the commit may only reach the lowest offset not yet done. A
//! [`PartitionOffsets`] remembers every fetched offset until it is done; [`PartitionOffsets::advance`]
//! says when the commit position moved. Offsets need not be contiguous (compaction and transaction
//! markers leave gaps): only offsets actually fetched count.

use std::collections::BTreeMap;

/// Where one fetched, unfinished message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Held back until its not-before time (a nack with a delay); not counted as in flight.
    Delayed,
    /// Fetched and queued for the consumer, not yet handed out.
    Queued,
    /// Handed to the application, not yet settled.
    Out,
    /// Will not be handed out by this consumer (it went away first, or a dropped delivery could
    /// not be re-published): it stays uncommitted, so the partition's next owner gets it.
    Abandoned,
}

/// What a fetched offset is, as far as this partition's tracker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Never fetched before: now tracked as [`State::Queued`].
    New,
    /// A second copy of one still tracked (in flight, delayed or abandoned): skip it.
    InFlight,
    /// A second copy of one already done: skip it.
    Done,
    /// Below the committed position: the log was truncated or recreated (a broker that lost its
    /// data). The caller starts a new tracker.
    Rewound,
}

/// The unfinished offsets of one partition.
#[derive(Debug, Default)]
pub(super) struct PartitionOffsets {
    /// Fetched and not yet done, with where each is.
    pending: BTreeMap<i64, State>,
    /// One past the highest offset fetched.
    end: Option<i64>,
    /// The commit position last returned by [`advance`](Self::advance).
    stored: Option<i64>,
    /// How many pending offsets are in each [`State`], by `State as usize`.
    counts: [usize; 4],
}

impl PartitionOffsets {
    /// Records that `offset` was fetched, and says what to do with it.
    pub(super) fn fetched(&mut self, offset: i64) -> Seen {
        if self.end.map_or(true, |end| offset >= end) {
            self.end = Some(offset + 1);
            if let Some(old) = self.pending.insert(offset, State::Queued) {
                self.counts[old as usize] -= 1;
            }
            self.counts[State::Queued as usize] += 1;
            Seen::New
        } else if self.pending.contains_key(&offset) {
            Seen::InFlight
        } else if self.stored.is_some_and(|stored| offset < stored) {
            Seen::Rewound
        } else {
            Seen::Done
        }
    }

    /// Moves a tracked offset from the state `from` to `to`. Returns false when the offset is not
    /// tracked or not in `from`.
    pub(super) fn set(&mut self, offset: i64, from: State, to: State) -> bool {
        match self.pending.get_mut(&offset) {
            Some(state) if *state == from => {
                *state = to;
                self.counts[from as usize] -= 1;
                self.counts[to as usize] += 1;
                true
            }
            _ => false,
        }
    }

    /// The state of a tracked offset.
    #[cfg(test)]
    pub(super) fn state(&self, offset: i64) -> Option<State> {
        self.pending.get(&offset).copied()
    }

    /// Marks `offset` done. Returns false when it was not pending (already done, or never fetched).
    pub(super) fn done(&mut self, offset: i64) -> bool {
        match self.pending.remove(&offset) {
            Some(state) => {
                self.counts[state as usize] -= 1;
                true
            }
            None => false,
        }
    }

    /// One past the highest offset fetched.
    pub(super) fn end(&self) -> Option<i64> {
        self.end
    }

    /// The position the group may commit: the lowest unfinished offset, or one past the highest
    /// fetched when everything is done. `None` before anything was fetched.
    pub(super) fn commit_position(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.end)
    }

    /// The commit position, when it moved past the one returned last time.
    pub(super) fn advance(&mut self) -> Option<i64> {
        let position = self.commit_position()?;
        if self.stored.is_some_and(|s| s >= position) {
            return None;
        }
        self.stored = Some(position);
        Some(position)
    }

    /// How many messages are queued or handed out (what counts against the in-flight limit, and
    /// what a closing consumer waits for).
    pub(super) fn in_flight(&self) -> usize {
        self.counts[State::Queued as usize] + self.counts[State::Out as usize]
    }

    /// How many messages are handed out and not settled.
    pub(super) fn out(&self) -> usize {
        self.counts[State::Out as usize]
    }

    /// How many messages wait for their not-before time.
    pub(super) fn delayed(&self) -> usize {
        self.counts[State::Delayed as usize]
    }

    /// Every queued message becomes abandoned (the consumer went away before handing them out).
    pub(super) fn abandon_queued(&mut self) {
        for state in self.pending.values_mut() {
            if *state == State::Queued {
                *state = State::Abandoned;
            }
        }
        self.counts[State::Abandoned as usize] += self.counts[State::Queued as usize];
        self.counts[State::Queued as usize] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept counts agree with the states.
    fn check_counts(p: &PartitionOffsets) {
        let count = |st: State| p.pending.values().filter(|s| **s == st).count();
        assert_eq!(p.in_flight(), count(State::Queued) + count(State::Out));
        assert_eq!(p.out(), count(State::Out));
        assert_eq!(p.delayed(), count(State::Delayed));
        assert_eq!(p.counts[State::Abandoned as usize], count(State::Abandoned));
    }

    #[test]
    fn counts_follow_every_change() {
        let mut p = PartitionOffsets::default();
        // A fixed pseudo-random walk over fetches, hand-outs, delays, settles and abandons.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = i64::try_from(x % 64).unwrap_or(0) + step / 16;
            match x % 7 {
                0 | 1 => {
                    p.fetched(offset);
                }
                2 => {
                    p.set(offset, State::Queued, State::Out);
                }
                3 => {
                    p.set(offset, State::Queued, State::Delayed);
                }
                4 => {
                    p.set(offset, State::Delayed, State::Queued);
                }
                5 => {
                    p.done(offset);
                }
                _ if step % 97 == 0 => p.abandon_queued(),
                _ => {
                    p.set(offset, State::Out, State::Abandoned);
                }
            }
            check_counts(&p);
            if let Some(position) = p.advance() {
                assert!(
                    p.pending.keys().all(|o| *o >= position),
                    "committed past a pending offset"
                );
            }
        }
    }

    fn fetch(p: &mut PartitionOffsets, offsets: impl IntoIterator<Item = i64>) {
        for o in offsets {
            assert_eq!(p.fetched(o), Seen::New, "offset {o}");
            assert!(p.set(o, State::Queued, State::Out));
        }
    }

    #[test]
    fn nothing_fetched_nothing_to_commit() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.commit_position(), None);
        assert_eq!(p.advance(), None);
    }

    #[test]
    fn a_slow_low_offset_holds_the_commit_back() {
        let mut p = PartitionOffsets::default();
        fetch(&mut p, 10..20);
        for o in 11..20 {
            assert!(p.done(o));
        }
        // Offset 10 is still running: nothing above it may be committed.
        assert_eq!(p.advance(), Some(10));
        assert_eq!(p.advance(), None);
        assert_eq!(p.out(), 1);
        assert!(p.done(10));
        assert_eq!(p.advance(), Some(20), "everything done: one past the last");
    }

    #[test]
    fn commit_moves_to_the_lowest_unfinished() {
        let mut p = PartitionOffsets::default();
        fetch(&mut p, 0..5);
        assert!(p.done(0));
        assert!(p.done(1));
        assert!(p.done(3));
        assert_eq!(p.advance(), Some(2));
        assert!(p.done(2));
        assert_eq!(p.advance(), Some(4));
        assert!(!p.done(3), "done twice");
        assert!(!p.done(99), "never fetched");
    }

    #[test]
    fn gaps_in_offsets_do_not_stall_the_commit() {
        let mut p = PartitionOffsets::default();
        fetch(&mut p, [3, 7, 8, 15]);
        for o in [3, 7, 8, 15] {
            assert!(p.done(o));
        }
        assert_eq!(p.advance(), Some(16));
    }

    #[test]
    fn second_copies_are_told_apart_from_a_log_that_went_backwards() {
        let mut p = PartitionOffsets::default();
        fetch(&mut p, 100..103);
        assert!(p.done(100));
        assert!(p.done(102));
        assert_eq!(p.fetched(101), Seen::InFlight, "a copy of one in flight");
        assert_eq!(
            p.fetched(102),
            Seen::Done,
            "a copy of one done, above the commit"
        );
        assert_eq!(
            p.fetched(0),
            Seen::Done,
            "nothing committed yet: a copy, not a rewind"
        );
        assert_eq!(p.advance(), Some(101));
        assert_eq!(
            p.fetched(100),
            Seen::Rewound,
            "below the committed position"
        );
        assert_eq!(p.end(), Some(103));
    }

    #[test]
    fn delayed_messages_hold_the_commit_but_not_the_in_flight_count() {
        let mut p = PartitionOffsets::default();
        assert_eq!(p.fetched(0), Seen::New);
        assert!(p.set(0, State::Queued, State::Delayed));
        fetch(&mut p, 1..3);
        assert!(p.done(1));
        assert!(p.done(2));
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.delayed(), 1);
        assert_eq!(p.advance(), Some(0));
        assert!(p.set(0, State::Delayed, State::Queued));
        assert!(
            !p.set(0, State::Delayed, State::Queued),
            "not delayed any more"
        );
        assert_eq!(p.state(0), Some(State::Queued));
        assert!(p.done(0));
        assert_eq!(p.advance(), Some(3));
    }

    #[test]
    fn going_away_abandons_what_was_never_handed_out() {
        let mut p = PartitionOffsets::default();
        fetch(&mut p, 0..2);
        assert_eq!(p.fetched(2), Seen::New);
        assert_eq!(p.fetched(3), Seen::New);
        p.abandon_queued();
        assert_eq!(p.state(2), Some(State::Abandoned));
        assert_eq!(p.state(1), Some(State::Out));
        assert_eq!(p.out(), 2);
        assert_eq!(p.in_flight(), 2, "abandoned ones are not waited for");
        assert_eq!(
            p.fetched(2),
            Seen::InFlight,
            "and not handed out again here"
        );
        assert!(p.done(0));
        assert!(p.done(1));
        assert_eq!(p.advance(), Some(2), "never past what was not done");
    }
}
