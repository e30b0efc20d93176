//! A consumer group's journal: one text record per line, and the state they add up to.
//!
//! | record | meaning |
//! |---|---|
//! | `f DEV INO BORN` | the group now reads this topic file from its start (first use, or the file was replaced) |
//! | `c OFF END COUNT DEADLINE` | the line at bytes `OFF..END` is handed out for the `COUNT`-th time, leased until `DEADLINE` (ms since the epoch) |
//! | `a OFF` | the line at `OFF` is acked: done for this group |
//! | `n OFF COUNT NOT_BEFORE` | delivery `COUNT` of `OFF` was nacked; hand it out again from `NOT_BEFORE` |
//! | `r OFF COUNT` | delivery `COUNT` of `OFF` was fetched but never handed out: give it back, uncounted |
//! | `e OFF COUNT DEADLINE` | the lease of delivery `COUNT` of `OFF` now runs until `DEADLINE` |
//! | `k CURSOR` | (snapshot) every line before byte `CURSOR` has been handed out at least once |
//! | `s OFF END COUNT DUE L\|R` | (snapshot) a line not yet acked: leased until `DUE`, or ready from `DUE` |
//!
//! Records that name a delivery (`COUNT`) apply only while that delivery is the latest one, so a
//! consumer whose lease ran out cannot nack or extend what another consumer holds now.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::topic::FileId;

/// One journal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    Bind(FileId),
    Claim {
        off: u64,
        end: u64,
        count: u32,
        deadline: u64,
    },
    Ack {
        off: u64,
    },
    Nack {
        off: u64,
        count: u32,
        not_before: u64,
    },
    Release {
        off: u64,
        count: u32,
    },
    Extend {
        off: u64,
        count: u32,
        deadline: u64,
    },
    Cursor(u64),
    Entry {
        off: u64,
        end: u64,
        count: u32,
        due: u64,
        leased: bool,
    },
}

impl Record {
    /// Appends the record and its newline to `out`.
    pub(crate) fn encode(&self, out: &mut String) {
        let _ = match *self {
            Record::Bind(id) => writeln!(out, "f {} {} {}", id.dev, id.ino, id.born),
            Record::Claim {
                off,
                end,
                count,
                deadline,
            } => {
                writeln!(out, "c {off} {end} {count} {deadline}")
            }
            Record::Ack { off } => writeln!(out, "a {off}"),
            Record::Nack {
                off,
                count,
                not_before,
            } => writeln!(out, "n {off} {count} {not_before}"),
            Record::Release { off, count } => writeln!(out, "r {off} {count}"),
            Record::Extend {
                off,
                count,
                deadline,
            } => writeln!(out, "e {off} {count} {deadline}"),
            Record::Cursor(cursor) => writeln!(out, "k {cursor}"),
            Record::Entry {
                off,
                end,
                count,
                due,
                leased,
            } => {
                writeln!(
                    out,
                    "s {off} {end} {count} {due} {}",
                    if leased { 'L' } else { 'R' }
                )
            }
        };
    }

    /// Parses one line (without its newline); `None` when it is not a record.
    pub(crate) fn decode(line: &str) -> Option<Record> {
        let mut fields = line.split(' ');
        let kind = fields.next()?;
        let mut n = || fields.next()?.parse::<u64>().ok();
        let record = match kind {
            "f" => Record::Bind(FileId {
                dev: n()?,
                ino: n()?,
                born: n()?,
            }),
            "c" => Record::Claim {
                off: n()?,
                end: n()?,
                count: count(n()?)?,
                deadline: n()?,
            },
            "a" => Record::Ack { off: n()? },
            "n" => Record::Nack {
                off: n()?,
                count: count(n()?)?,
                not_before: n()?,
            },
            "r" => Record::Release {
                off: n()?,
                count: count(n()?)?,
            },
            "e" => Record::Extend {
                off: n()?,
                count: count(n()?)?,
                deadline: n()?,
            },
            "k" => Record::Cursor(n()?),
            "s" => {
                let (off, end, c, due) = (n()?, n()?, count(n()?)?, n()?);
                let leased = match fields.next()? {
                    "L" => true,
                    "R" => false,
                    _ => return None,
                };
                Record::Entry {
                    off,
                    end,
                    count: c,
                    due,
                    leased,
                }
            }
            _ => return None,
        };
        fields.next().is_none().then_some(record)
    }
}

fn count(n: u64) -> Option<u32> {
    u32::try_from(n).ok()
}

/// A line of the topic that the group has handed out and not yet acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Where the line ends (after its newline, when it has one).
    pub(crate) end: u64,
    /// How many times it has been handed out.
    pub(crate) count: u32,
    /// Leased: until when. Ready: from when.
    pub(crate) due: u64,
    pub(crate) leased: bool,
}

/// What a group's journal adds up to.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// The topic file the group reads; `None` before its first use.
    pub(crate) file: Option<FileId>,
    /// Every line starting before this byte has been handed out at least once.
    pub(crate) cursor: u64,
    entries: HashMap<u64, Entry>,
    /// `(due, offset)` of every entry: what can be handed out at a time is a prefix.
    by_due: BTreeSet<(u64, u64)>,
}

impl GroupState {
    /// Applies one record.
    pub(crate) fn apply(&mut self, record: &Record) {
        match *record {
            Record::Bind(id) => {
                *self = GroupState::default();
                self.file = Some(id);
            }
            Record::Claim {
                off,
                end,
                count,
                deadline,
            } => {
                self.put(
                    off,
                    Entry {
                        end,
                        count,
                        due: deadline,
                        leased: true,
                    },
                );
                self.cursor = self.cursor.max(end);
            }
            Record::Ack { off } => {
                if let Some(e) = self.entries.remove(&off) {
                    self.by_due.remove(&(e.due, off));
                }
            }
            Record::Nack {
                off,
                count,
                not_before,
            } => {
                self.update(off, count, |e| {
                    e.due = not_before;
                    e.leased = false;
                });
            }
            Record::Release { off, count } => {
                self.update(off, count, |e| {
                    e.count -= 1;
                    e.due = 0;
                    e.leased = false;
                });
            }
            Record::Extend {
                off,
                count,
                deadline,
            } => {
                self.update(off, count, |e| e.due = deadline);
            }
            Record::Cursor(cursor) => self.cursor = cursor,
            Record::Entry {
                off,
                end,
                count,
                due,
                leased,
            } => {
                self.put(
                    off,
                    Entry {
                        end,
                        count,
                        due,
                        leased,
                    },
                );
            }
        }
    }

    fn put(&mut self, off: u64, entry: Entry) {
        if let Some(old) = self.entries.insert(off, entry) {
            self.by_due.remove(&(old.due, off));
        }
        self.by_due.insert((entry.due, off));
    }

    fn update(&mut self, off: u64, count: u32, change: impl FnOnce(&mut Entry)) {
        let Some(entry) = self.entries.get(&off).copied() else {
            return;
        };
        if entry.count != count || !entry.leased {
            return;
        }
        let mut new = entry;
        change(&mut new);
        self.put(off, new);
    }

    /// The entry at `off`, if it is not acked yet.
    pub(crate) fn entry(&self, off: u64) -> Option<Entry> {
        self.entries.get(&off).copied()
    }

    /// Whether delivery `count` of `off` is the current one and still leased (so it may be nacked or
    /// extended).
    pub(crate) fn holds(&self, off: u64, count: u32) -> bool {
        self.entries
            .get(&off)
            .is_some_and(|e| e.count == count && e.leased)
    }

    /// Entries that may be handed out at `now` (expired leases, nacked lines past their delay),
    /// earliest first.
    pub(crate) fn due(&self, now: u64) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.by_due
            .iter()
            .take_while(move |(due, _)| *due <= now)
            .filter_map(|(_, off)| Some((*off, *self.entries.get(off)?)))
    }

    /// The earliest time an entry becomes due.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// Whether a nacked line waits out a delay past `now`.
    pub(crate) fn delayed(&self, now: u64) -> bool {
        self.by_due
            .range((now + 1, 0)..)
            .any(|(_, off)| self.entries.get(off).is_some_and(|e| !e.leased))
    }

    /// How many lines are handed out and not acked.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The records that rebuild this state from nothing.
    pub(crate) fn snapshot(&self) -> String {
        let mut out = String::new();
        if let Some(id) = self.file {
            Record::Bind(id).encode(&mut out);
        }
        Record::Cursor(self.cursor).encode(&mut out);
        let mut offsets: Vec<_> = self.entries.keys().copied().collect();
        offsets.sort_unstable();
        for off in offsets {
            let e = self.entries[&off];
            Record::Entry {
                off,
                end: e.end,
                count: e.count,
                due: e.due,
                leased: e.leased,
            }
            .encode(&mut out);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id() -> FileId {
        FileId {
            dev: 1,
            ino: 2,
            born: 3,
        }
    }

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Bind(id()),
            Record::Claim {
                off: 10,
                end: 20,
                count: 1,
                deadline: 99,
            },
            Record::Ack { off: 10 },
            Record::Nack {
                off: 10,
                count: 2,
                not_before: 5,
            },
            Record::Release { off: 3, count: 1 },
            Record::Extend {
                off: 3,
                count: 4,
                deadline: 7,
            },
            Record::Cursor(42),
            Record::Entry {
                off: 1,
                end: 2,
                count: 3,
                due: 4,
                leased: true,
            },
            Record::Entry {
                off: 1,
                end: 2,
                count: 3,
                due: 4,
                leased: false,
            },
        ];
        for r in records {
            let mut s = String::new();
            r.encode(&mut s);
            assert_eq!(Record::decode(s.trim_end()), Some(r), "{s}");
        }
        for bad in [
            "",
            "x 1",
            "c 1 2",
            "a",
            "a 1 2",
            "s 1 2 3 4 X",
            "c 1 2 99999999999 4",
        ] {
            assert_eq!(Record::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn stale_deliveries_cannot_touch_the_current_one() {
        let mut s = GroupState::default();
        s.apply(&Record::Bind(id()));
        s.apply(&Record::Claim {
            off: 0,
            end: 5,
            count: 1,
            deadline: 100,
        });
        assert_eq!(s.cursor, 5);
        assert_eq!(s.due(50).count(), 0);
        assert_eq!(s.due(100).count(), 1);
        // The lease ran out; another consumer took it.
        s.apply(&Record::Claim {
            off: 0,
            end: 5,
            count: 2,
            deadline: 300,
        });
        s.apply(&Record::Nack {
            off: 0,
            count: 1,
            not_before: 0,
        });
        s.apply(&Record::Extend {
            off: 0,
            count: 1,
            deadline: 1000,
        });
        assert_eq!(
            s.entry(0).map(|e| (e.count, e.due, e.leased)),
            Some((2, 300, true))
        );
        assert!(!s.holds(0, 1));
        assert!(s.holds(0, 2));
        s.apply(&Record::Nack {
            off: 0,
            count: 2,
            not_before: 400,
        });
        assert!(s.delayed(350));
        assert!(!s.delayed(400));
        assert_eq!(s.due(400).map(|(off, _)| off).collect::<Vec<_>>(), vec![0]);
        s.apply(&Record::Ack { off: 0 });
        assert_eq!(s.len(), 0);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn release_gives_back_uncounted_and_snapshot_rebuilds() {
        let mut s = GroupState::default();
        s.apply(&Record::Bind(id()));
        s.apply(&Record::Claim {
            off: 0,
            end: 5,
            count: 1,
            deadline: 100,
        });
        s.apply(&Record::Claim {
            off: 5,
            end: 9,
            count: 1,
            deadline: 100,
        });
        s.apply(&Record::Release { off: 5, count: 1 });
        assert_eq!(s.entry(5).map(|e| (e.count, e.leased)), Some((0, false)));
        let mut rebuilt = GroupState::default();
        for line in s.snapshot().lines() {
            rebuilt.apply(&Record::decode(line).unwrap());
        }
        assert_eq!(rebuilt.file, s.file);
        assert_eq!(rebuilt.cursor, 9);
        assert_eq!(rebuilt.entry(0), s.entry(0));
        assert_eq!(rebuilt.entry(5), s.entry(5));
        // Rebinding starts over.
        s.apply(&Record::Bind(FileId {
            dev: 1,
            ino: 2,
            born: 4,
        }));
        assert_eq!((s.cursor, s.len()), (0, 0));
    }
}
