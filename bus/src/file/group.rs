//! One consumer group of one topic, as seen by one process: its journal, its lock, and the lines it
//! hands out.
//!
//! Every change goes through [`Group::locked`]: take the group's `flock`, read what other processes
//! appended to the journal since, apply the changes waiting in this process, append their records
//! with one `write`, let go. Callers queue their changes first, so whoever takes the lock writes
//! everybody's (group commit). The locked work runs in a spawned task, so a caller that stops
//! waiting cannot leave the lock held.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::batch::Batch;
use super::journal::{GroupState, Record};
use super::reader::{Line, Tail, TopicReader};
use super::topic::{lock_exclusive, FileId};
use super::{lock, ms, now_ms, FileOptions};
use crate::BusError;

/// How long a flusher started by an ack waits for a claim to write the ack with (see
/// [`Group::queue`]).
const ACK_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// A change to one delivery.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Ack,
    Nack {
        not_before: u64,
    },
    /// Fetched but never handed out: give it back without counting it.
    Release,
    Extend {
        deadline: u64,
    },
}

/// Which delivery a change is about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settle {
    pub(crate) file: FileId,
    pub(crate) off: u64,
    pub(crate) count: u32,
    pub(crate) op: Op,
}

/// Answers a queued change: `Err` says why it could not be made.
type Reply = oneshot::Sender<Result<(), String>>;

struct Pending {
    settle: Settle,
    reply: Option<Reply>,
}

/// A line taken for a consumer of this process, not yet handed out.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) file: FileId,
    pub(crate) off: u64,
    pub(crate) count: u32,
    pub(crate) payload: Bytes,
    pub(crate) at: Instant,
}

/// What a consumer may expect after a claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outlook {
    /// How many lines were claimed.
    pub(crate) claimed: usize,
    /// Nothing to hand out now, the file is read to its end, and no nacked line waits out a delay.
    pub(crate) exhausted: bool,
    /// When something may become due (a lease running out, a nack delay, a partial line's wait).
    pub(crate) wake_at: Option<u64>,
    /// The topic file and journal as they were: while they stay so, a new claim would find nothing.
    pub(crate) topic: Option<(FileId, u64)>,
    pub(crate) journal_len: u64,
}

pub(crate) struct Group {
    topic: String,
    name: String,
    topic_path: PathBuf,
    journal_path: PathBuf,
    lock: Arc<File>,
    options: Arc<FileOptions>,
    core: tokio::sync::Mutex<Core>,
    pending: Batch<Pending>,
    /// Woken when a line became ready again through this process (a nack, a release).
    pub(crate) ready: Notify,
}

struct Core {
    journal: Option<File>,
    /// How much of the journal has been applied to `state`.
    jpos: u64,
    state: GroupState,
    reader: TopicReader,
    /// A last line without newline, first seen at that size at that instant.
    partial: Option<(u64, u64, Instant)>,
    warned_missing: bool,
    /// The size of the last snapshot written, so a large one is not rewritten at every change.
    snapshot_len: u64,
}

impl Group {
    /// Opens (creating) `DIR/.groups/<topic>/<group>/`.
    pub(crate) fn open(
        dir: &Path,
        topic: &str,
        name: &str,
        options: Arc<FileOptions>,
    ) -> Result<Group, BusError> {
        let group_dir = dir.join(".groups").join(topic).join(name);
        std::fs::create_dir_all(&group_dir)
            .map_err(|e| BusError::io("cannot create the group directory", &group_dir, e))?;
        let lock_path = group_dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| BusError::io("cannot open the group lock", &lock_path, e))?;
        let topic_path = dir.join(format!("{topic}.jsonl"));
        Ok(Group {
            topic: topic.to_owned(),
            name: name.to_owned(),
            journal_path: group_dir.join("journal"),
            lock: Arc::new(lock),
            options,
            core: tokio::sync::Mutex::new(Core {
                journal: None,
                jpos: 0,
                state: GroupState::default(),
                reader: TopicReader::new(topic_path.clone()),
                partial: None,
                warned_missing: false,
                snapshot_len: 0,
            }),
            topic_path,
            pending: Batch::new(),
            ready: Notify::new(),
        })
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn lease_ms(&self) -> u64 {
        ms(self.options.lease)
    }

    /// Claims up to `max` lines (expired leases and nacked lines first, then new lines) and puts
    /// them at the back of `into`.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        max: usize,
        into: Arc<Mutex<VecDeque<Claimed>>>,
    ) -> Result<Outlook, BusError> {
        let group = Arc::clone(self);
        let work = tokio::spawn(async move {
            let mut core = group.core.lock().await;
            let ops = group.pending.drain();
            let (claimed, mut outlook) = group
                .locked(&mut core, ops, |g, core, records| {
                    g.select(core, max, records)
                })
                .await?;
            outlook.journal_len = core.jpos;
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(claimed);
            Ok(outlook)
        });
        work.await
            .map_err(|e| BusError::broker(format!("claim from topic {:?}", self.topic), e))?
    }

    /// Applies a change to a delivery and returns once it is in the journal.
    pub(crate) async fn settle(self: &Arc<Self>, settle: Settle) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        self.queue(Pending {
            settle,
            reply: Some(tx),
        });
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(BusError::broker(
                format!(
                    "{} of a delivery of topic {:?} in group {:?}",
                    op_name(settle.op),
                    self.topic,
                    self.name
                ),
                reason,
            )),
            Err(_) => Err(BusError::Closed(format!(
                "group {:?} of topic {:?}",
                self.name, self.topic
            ))),
        }
    }

    /// Queues a change without waiting for it (from `Drop`).
    pub(crate) fn settle_later(self: &Arc<Self>, settle: Settle) {
        self.queue(Pending {
            settle,
            reply: None,
        });
    }

    /// Queues a change and starts a flusher when none runs. Outside a runtime (a drop at the very
    /// end), the change waits for the next claim or flush.
    ///
    /// A flusher started by an ack waits [`ACK_PAUSE`] first: a worker usually takes its next task
    /// right after an ack, and that claim writes the ack with it, in one locked append instead of
    /// two. Anything else is written at once.
    fn queue(self: &Arc<Self>, pending: Pending) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.pending.push_quietly(pending);
            return;
        };
        let pause = matches!(pending.settle.op, Op::Ack);
        if self.pending.push(pending) {
            // A task of its own: a caller that stops waiting cannot leave the lock held.
            let group = Arc::clone(self);
            runtime.spawn(async move {
                if pause {
                    tokio::time::sleep(ACK_PAUSE).await;
                }
                group.flush_batches().await;
            });
        }
    }

    /// The flusher: writes queued changes, batch after batch, until none is left.
    async fn flush_batches(&self) {
        let mut core = self.core.lock().await;
        loop {
            // Let the tasks that are about to ack queue theirs first: bigger batches.
            tokio::task::yield_now().await;
            let Some(ops) = self.pending.next_batch() else {
                return;
            };
            if let Err(e) = self.locked(&mut core, ops, |_, _, _| Ok(())).await {
                tracing::error!(topic = %self.topic, group = %self.name, error = %e,
                    "cannot write to the group journal");
            }
        }
    }

    /// Writes every queued change now (on close).
    pub(crate) async fn flush(&self) {
        let mut core = self.core.lock().await;
        if self.pending.is_empty() {
            return;
        }
        let ops = self.pending.drain();
        if let Err(e) = self.locked(&mut core, ops, |_, _, _| Ok(())).await {
            tracing::error!(topic = %self.topic, group = %self.name, error = %e,
                "cannot write to the group journal; unsettled deliveries come back after their lease");
        }
    }

    /// Whether the topic file or the journal changed since `outlook` was taken.
    pub(crate) fn changed_since(&self, outlook: &Outlook) -> bool {
        let topic = FileId::at(&self.topic_path).ok().flatten();
        let journal_len = std::fs::metadata(&self.journal_path).map_or(0, |m| m.len());
        topic != outlook.topic || journal_len != outlook.journal_len
    }

    /// Runs `work` holding the group's lock, between reading and writing the journal, together
    /// with the queued changes `ops`, and answers each of them once the journal has them (on disk,
    /// with `fsync`).
    async fn locked<T>(
        &self,
        core: &mut Core,
        ops: Vec<Pending>,
        work: impl FnOnce(&Self, &mut Core, &mut Vec<Record>) -> io::Result<T>,
    ) -> Result<T, BusError> {
        let io_error = |e| BusError::io("cannot update the group journal", &self.journal_path, e);
        if let Err(e) = lock_exclusive(&self.lock).await {
            answer(
                self,
                ops.into_iter().map(|p| (p.reply, Ok(()))).collect(),
                Some(&e),
            );
            return Err(io_error(e));
        }
        let done = self.locked_sync(core, ops, work);
        let _ = lock::unlock(&self.lock);
        let mut value = done.value;
        if value.is_ok() && done.wrote && self.options.fsync {
            if let Err(e) = self.sync_journal(core).await {
                value = Err(e);
            }
        }
        answer(self, done.replies, value.as_ref().err());
        if value.is_ok() && done.readied {
            self.ready.notify_waiters();
        }
        value.map_err(io_error)
    }

    async fn sync_journal(&self, core: &Core) -> io::Result<()> {
        let Some(journal) = core.journal.as_ref().map(File::try_clone).transpose()? else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || journal.sync_data())
            .await
            .map_err(io::Error::other)?
    }

    fn locked_sync<T>(
        &self,
        core: &mut Core,
        pending: Vec<Pending>,
        work: impl FnOnce(&Self, &mut Core, &mut Vec<Record>) -> io::Result<T>,
    ) -> Locked<T> {
        let mut replies = Vec::with_capacity(pending.len());
        if let Err(e) = self.catch_up(core) {
            replies.extend(pending.into_iter().map(|p| (p.reply, Ok(()))));
            return Locked {
                value: Err(e),
                wrote: false,
                readied: false,
                replies,
            };
        }
        let mut records = Vec::new();
        let mut readied = false;
        for p in pending {
            let outcome = settle_one(&mut core.state, &p.settle, &mut records);
            readied |= matches!(p.settle.op, Op::Nack { .. } | Op::Release) && outcome.is_ok();
            replies.push((p.reply, outcome));
        }
        let value = work(self, core, &mut records).and_then(|v| {
            self.write(core, &records)?;
            Ok(v)
        });
        if value.is_err() {
            // The state may hold changes the journal does not: read it all again next time.
            core.journal = None;
        }
        Locked {
            value,
            wrote: !records.is_empty(),
            readied,
            replies,
        }
    }

    /// Reads and applies what was appended to the journal since we last looked. Holding the lock.
    fn catch_up(&self, core: &mut Core) -> io::Result<()> {
        // One `fstat` tells both whether to reopen and how far the journal goes: it runs at every
        // change of the group.
        let mut meta = core.journal.as_ref().map(File::metadata).transpose()?;
        // None open yet, or compacted by another process: the file we have open was renamed over.
        if !matches!(&meta, Some(m) if m.nlink() > 0) {
            core.journal = Some(open_journal(&self.journal_path)?);
            core.jpos = 0;
            core.state = GroupState::default();
            meta = None;
        }
        let Some(journal) = &core.journal else {
            return Ok(());
        };
        let len = match meta {
            Some(meta) => meta.len(),
            None => journal.metadata()?.len(),
        };
        if len <= core.jpos {
            if len < core.jpos {
                // Shrunk without a rename: someone edited it. Start over from what it holds.
                core.jpos = 0;
                core.state = GroupState::default();
                return self.catch_up(core);
            }
            return Ok(());
        }
        let mut bytes = vec![0u8; usize::try_from(len - core.jpos).map_err(io::Error::other)?];
        journal.read_exact_at(&mut bytes, core.jpos)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            // Every writer holds the lock we hold now, so this is a record cut off by a crash.
            tracing::warn!(path = %self.journal_path.display(),
                "removing a group record cut off by a crash");
            journal.set_len(core.jpos + complete as u64)?;
        }
        for line in bytes[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match std::str::from_utf8(line).ok().and_then(Record::decode) {
                Some(record) => core.state.apply(&record),
                None => tracing::warn!(path = %self.journal_path.display(),
                    record = %String::from_utf8_lossy(line), "skipping an unreadable group record"),
            }
        }
        core.jpos += complete as u64;
        Ok(())
    }

    /// Appends `records` with one write, then compacts the journal when it has grown large.
    fn write(&self, core: &mut Core, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut text = String::with_capacity(records.len() * 32);
        for r in records {
            r.encode(&mut text);
        }
        let Some(mut journal) = core.journal.as_ref() else {
            return Err(io::Error::other("the journal is not open"));
        };
        if let Err(e) = journal.write_all(text.as_bytes()) {
            // Our state is ahead of the file now: take back any partial write and re-read it all.
            let _ = journal.set_len(core.jpos);
            core.journal = None;
            return Err(e);
        }
        core.jpos += text.len() as u64;
        if core.jpos > self.options.compact_at.max(2 * core.snapshot_len) {
            if let Err(e) = self.compact(core) {
                tracing::warn!(path = %self.journal_path.display(), error = %e,
                    "cannot compact the group journal; it keeps growing");
            }
        }
        Ok(())
    }

    /// Replaces the journal with a snapshot of the state. Holding the lock.
    fn compact(&self, core: &mut Core) -> io::Result<()> {
        let snapshot = core.state.snapshot();
        let tmp = self.journal_path.with_file_name("journal.new");
        let mut file = File::create(&tmp)?;
        file.write_all(snapshot.as_bytes())?;
        if self.options.fsync {
            file.sync_data()?;
        }
        std::fs::rename(&tmp, &self.journal_path)?;
        if self.options.fsync {
            if let Some(parent) = self.journal_path.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        core.journal = Some(open_journal(&self.journal_path)?);
        core.jpos = snapshot.len() as u64;
        core.snapshot_len = core.jpos;
        Ok(())
    }

    /// Chooses what to hand out: due lines first, then new ones. Holding the lock.
    fn select(
        &self,
        core: &mut Core,
        max: usize,
        records: &mut Vec<Record>,
    ) -> io::Result<(Vec<Claimed>, Outlook)> {
        let now = now_ms();
        let current = core.reader.current()?;
        let Some(file) = self.bind(core, current, records) else {
            return Ok((Vec::new(), self.outlook(core, current, 0, true, None)));
        };
        if !core.reader.open(file)? {
            // Replaced between our look and the open: next time.
            let outlook = self.outlook(core, current, 0, false, Some(now + 10));
            return Ok((Vec::new(), outlook));
        }
        let mut take = Taker {
            file,
            deadline: now + self.lease_ms(),
            claimed: Vec::new(),
            records,
        };
        self.take_due(core, now, max, &mut take);
        let (mut tail, mut wake_at) = (Tail::More, None);
        if take.claimed.len() < max {
            let lines;
            (lines, tail, wake_at) = self.new_lines(core, max - take.claimed.len())?;
            for line in lines {
                take.claim(core, line.off, line.end, 1, line.payload);
            }
        }
        let claimed = take.claimed;
        let exhausted = claimed.is_empty() && tail == Tail::End && !core.state.delayed(now);
        let wake_at = match (wake_at, core.state.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let outlook = self.outlook(core, current, claimed.len(), exhausted, wake_at);
        Ok((claimed, outlook))
    }

    /// Takes up to `max` lines whose lease ran out or whose nack delay passed.
    fn take_due(&self, core: &mut Core, now: u64, max: usize, take: &mut Taker<'_>) {
        let due: Vec<_> = core.state.due(now).take(max).collect();
        for (off, entry) in due {
            match core.reader.read_line(off, entry.end) {
                Ok(payload) => take.claim(core, off, entry.end, entry.count + 1, payload),
                Err(e) => {
                    tracing::error!(path = %self.topic_path.display(), offset = off, error = %e,
                        "cannot read a line the group handed out before; it is dropped from the group");
                    push(core, take.records, Record::Ack { off });
                }
            }
        }
    }

    /// Up to `max` lines after the cursor, what follows them, and when to look again if a last
    /// line without newline may still be being written.
    fn new_lines(&self, core: &mut Core, max: usize) -> io::Result<(Vec<Line>, Tail, Option<u64>)> {
        let mut lines = Vec::new();
        let cursor = core.state.cursor;
        let tail = core.reader.lines_from(cursor, max, &mut lines)?;
        let Tail::Partial { off, size } = tail else {
            core.partial = None;
            return Ok((lines, tail, None));
        };
        match self.truncated(core, off, size)? {
            Ok(()) => {
                tracing::warn!(path = %self.topic_path.display(), offset = off,
                    "the last line has no newline and nobody is writing it; delivering it as it is");
                let payload = core.reader.read_line(off, size)?;
                lines.push(Line {
                    off,
                    end: size,
                    payload,
                });
                Ok((lines, Tail::End, None))
            }
            Err(retry_at) => Ok((lines, tail, Some(retry_at))),
        }
    }

    fn outlook(
        &self,
        core: &Core,
        topic: Option<(FileId, u64)>,
        claimed: usize,
        exhausted: bool,
        wake_at: Option<u64>,
    ) -> Outlook {
        Outlook {
            claimed,
            exhausted,
            wake_at,
            topic,
            journal_len: core.jpos, // updated once this claim's records are written
        }
    }

    /// Makes the group read the file the topic path names now, starting over when it is another
    /// file than before. `None` when there is no file.
    fn bind(
        &self,
        core: &mut Core,
        current: Option<(FileId, u64)>,
        records: &mut Vec<Record>,
    ) -> Option<FileId> {
        let Some((id, len)) = current else {
            if !core.warned_missing {
                tracing::warn!(path = %self.topic_path.display(), group = %self.name,
                    "the topic file is missing (deleted?); waiting for it to be created again");
                core.warned_missing = true;
            }
            return None;
        };
        core.warned_missing = false;
        match core.state.file {
            Some(bound) if bound == id && len >= core.state.cursor => {}
            bound => {
                if bound.is_some() {
                    tracing::warn!(path = %self.topic_path.display(), group = %self.name,
                        unacked = core.state.len(),
                        "the topic file was replaced or truncated; the group reads the new one from \
                         its first line, and the unacked lines of the old one are gone");
                }
                core.reader.reset();
                core.partial = None;
                push(core, records, Record::Bind(id));
            }
        }
        Some(id)
    }

    /// Whether the line without newline at `off..size` is truncated: unchanged for `partial_wait`
    /// and not being written by a taskbus producer. `Err(when)` says when to look again.
    fn truncated(&self, core: &mut Core, off: u64, size: u64) -> io::Result<Result<(), u64>> {
        let since = match core.partial {
            Some((o, s, since)) if o == off && s == size => since,
            _ => {
                let now = Instant::now();
                core.partial = Some((off, size, now));
                now
            }
        };
        let waited = since.elapsed();
        if waited < self.options.partial_wait {
            return Ok(Err(now_ms() + ms(self.options.partial_wait - waited) + 1));
        }
        let Some(file) = core.reader.file() else {
            return Ok(Err(now_ms() + 10));
        };
        if !lock::try_lock_shared(file)? {
            return Ok(Err(now_ms() + 10)); // a producer is writing it right now
        }
        let len = file.metadata().map(|m| m.len());
        let _ = lock::unlock(file);
        if len? != size {
            return Ok(Err(now_ms()));
        }
        core.partial = None;
        Ok(Ok(()))
    }
}

/// What a locked section did, to be answered once it is durable.
struct Locked<T> {
    value: io::Result<T>,
    wrote: bool,
    /// A line became ready again (nack, release).
    readied: bool,
    replies: Vec<(Option<Reply>, Result<(), String>)>,
}

/// Answers each queued change: its own outcome, or `failure` when the section failed.
fn answer(
    group: &Group,
    replies: Vec<(Option<Reply>, Result<(), String>)>,
    failure: Option<&io::Error>,
) {
    for (reply, outcome) in replies {
        let outcome = match failure {
            Some(e) => Err(e.to_string()),
            None => outcome,
        };
        match reply {
            Some(reply) => {
                let _ = reply.send(outcome);
            }
            None => {
                if let Err(e) = outcome {
                    tracing::warn!(topic = %group.topic, group = %group.name, error = %e,
                        "a dropped delivery could not be given back; it comes back after its lease");
                }
            }
        }
    }
}

/// Validates a change against the current state and records it.
fn settle_one(state: &mut GroupState, s: &Settle, records: &mut Vec<Record>) -> Result<(), String> {
    if state.file != Some(s.file) {
        return match s.op {
            Op::Extend { .. } => {
                Err("the topic file was replaced since this delivery; it is gone".to_owned())
            }
            _ => Ok(()),
        };
    }
    let (off, count) = (s.off, s.count);
    let record = match s.op {
        Op::Ack => state.entry(off).map(|_| Record::Ack { off }),
        Op::Nack { not_before } => state.holds(off, count).then_some(Record::Nack {
            off,
            count,
            not_before,
        }),
        Op::Release => state
            .holds(off, count)
            .then_some(Record::Release { off, count }),
        Op::Extend { deadline } => {
            if !state.holds(off, count) {
                return Err(
                    "its lease ran out and it was handed to another consumer (or acked); \
                     call in_progress more often than the bus's lease"
                        .to_owned(),
                );
            }
            Some(Record::Extend {
                off,
                count,
                deadline,
            })
        }
    };
    if let Some(record) = record {
        state.apply(&record);
        records.push(record);
    }
    Ok(())
}

/// Collects the lines of one claim and their records.
struct Taker<'a> {
    file: FileId,
    deadline: u64,
    claimed: Vec<Claimed>,
    records: &'a mut Vec<Record>,
}

impl Taker<'_> {
    fn claim(&mut self, core: &mut Core, off: u64, end: u64, count: u32, payload: Bytes) {
        let deadline = self.deadline;
        push(
            core,
            self.records,
            Record::Claim {
                off,
                end,
                count,
                deadline,
            },
        );
        self.claimed.push(Claimed {
            file: self.file,
            off,
            count,
            payload,
            at: Instant::now(),
        });
    }
}

fn push(core: &mut Core, records: &mut Vec<Record>, record: Record) {
    core.state.apply(&record);
    records.push(record);
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Ack => "ack",
        Op::Nack { .. } => "nack",
        Op::Release => "release",
        Op::Extend { .. } => "in_progress",
    }
}

fn open_journal(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}
