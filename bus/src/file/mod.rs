//! `file://DIR` — topics as newline-delimited JSON files shared by processes — and `stdio:`.
//!
//! # `file://DIR`
//!
//! One topic is one file, `DIR/<topic>.jsonl`, one message (task) per line: the same files
//! pcelvng/task's io bus reads and writes, so `cat`, `grep`, `jq` and `tail -f` work on a topic, and a
//! file of tasks written by hand or by another tool is a topic. `DIR` is created when missing.
//!
//! | URL | directory |
//! |---|---|
//! | `file://./data` or `file://data` | `data`, relative to the working directory |
//! | `file:///var/lib/taskbus` | an absolute path |
//!
//! Options (query parameters), besides the common ones of [`config`](crate::config):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `lease` | `30s` | how long a delivery stays with its consumer without an ack, nack or [`in_progress`](crate::Delivery::in_progress); then it goes to another consumer |
//! | `fsync` | `false` | `true`: `send`, ack and nack return only once the data is on disk (`fdatasync`), so they survive a machine crash |
//! | `poll` | `25ms` | the longest an idle consumer waits before looking for lines appended by other processes (it looks sooner right after activity, and at once for sends of its own process) |
//! | `partial_wait` | `1s` | how long a last line without its newline, that no taskbus producer is writing, may stay unchanged before it is taken as truncated (see below) |
//! | `compact_at` | `8388608` | a group journal longer than this many bytes is compacted |
//!
//! ## How processes share a directory
//!
//! - **Producers** append whole lines. A batch of concurrent sends of one process becomes one
//!   `write(2)` to the file opened with `O_APPEND`, under an exclusive `flock(2)` of the topic file,
//!   so lines of concurrent processes never interleave. `send` returns once the line is written to the
//!   file (the operating system's page cache); with `fsync=true`, once it is on disk.
//! - **Consumer groups** keep their state in `DIR/.groups/<topic>/<group>/journal`, an append-only
//!   log of what was handed out (with a lease deadline and the delivery count), acked, nacked or
//!   extended, plus the position up to which the topic has been read. Every change to it is made
//!   under an exclusive `flock` of `DIR/.groups/<topic>/<group>/lock`, after reading what other
//!   processes appended since, so the members of a group never take the same line twice. A process
//!   batches: one lock and one `write` claim up to `max_in_flight` lines, or settle every ack and nack
//!   waiting at that moment. The journal is compacted (rewritten as a snapshot and renamed over)
//!   when it passes `compact_at` bytes; other processes notice the rename and read the snapshot.
//! - A new group starts at the first line of the file (replay). Each group has its own journal, so
//!   groups never take from each other.
//! - **Leases.** A delivery not settled within `lease` can be taken by any member of the group,
//!   with its delivery count raised; `in_progress` pushes the deadline back by `lease`. A consumer
//!   that dies (even `SIGKILL`) releases nothing explicitly: its leases simply run out — also those
//!   of lines it had claimed ahead and not yet handed out, which come back as a later delivery
//!   though no worker ran them: a consumer claims at least a quarter of `max_in_flight` per lock,
//!   so up to `max_in_flight` and a quarter of its lines may come back. A delivery dropped without
//!   being settled is nacked at once. Nack with a delay holds the line back for the delay, across
//!   processes.
//! - Consumers follow the file by polling its size (cheap `fstat`s, no lock while nothing changed);
//!   a finite consumer ([`ConsumerOptions::finite`](crate::ConsumerOptions)) ends at the end of
//!   the file once no nacked line of its group is waiting out a delay.
//!
//! ## What survives a crash
//!
//! - **A process crash** (panic, `kill -9`, OOM): everything `send` confirmed, and every ack, nack and
//!   lease written before it — those are in the kernel's page cache, which other processes read. Its
//!   unsettled deliveries come back after their lease. A record half-written at the instant of the
//!   kill is cut off by the next process that takes the lock.
//! - **A machine crash** (power loss, kernel panic) with the default `fsync=false`: what the kernel
//!   had not yet written back — typically the last few seconds — may be lost: sent lines (real loss)
//!   and group records (a lost ack means a duplicate delivery; a lost claim means the line is
//!   handed out again). With `fsync=true`, `send` and every group change returns only after
//!   `fdatasync`, so nothing confirmed is lost; it costs one disk flush per batch.
//!
//! ## Bad input
//!
//! - A line that is not a valid task is delivered as it is; [`Subscription`](crate::Subscription)
//!   moves it to the dead-letter topic with the reason and carries on. Blank lines are skipped, and a
//!   trailing `\r` is removed.
//! - A last line without its newline is not delivered while it may still be being written: never
//!   while a taskbus producer holds the file's lock, and not before it has stayed unchanged for
//!   `partial_wait`. After that it is taken as truncated (a producer died mid-write, or the file was
//!   written by hand without a final newline) and delivered as it is — a valid task is processed, a
//!   fragment is dead-lettered — so it never blocks the topic. The next producer that appends first
//!   ends that line, so the new line is never glued to the fragment.
//! - A topic file deleted (or replaced, or truncated) under a consumer: the consumer keeps running
//!   and logs a warning; when the file is created again, the group starts it from its first line.
//!   Lines of the old file that were not consumed go with it. Producers notice the deletion and
//!   create a new file, so later sends are not written into the deleted one.
//! - A directory that cannot be created or written is an error at connect, naming the path.
//! - Topic and group names are checked ([`check_name`](crate::check_name)): no empty names,
//!   no `/`, nothing starting with `.`.
//!
//! Everything relies on `flock` and `O_APPEND` behaving as on a local Linux or macOS file system;
//! do not share a directory over NFS.
//!
//! # `stdio:`
//!
//! Consumers read tasks from standard input, one per line, of any length, and end cleanly at end of
//! input; every consumer of the process shares the one input, whatever its topic or group. `send`
//! writes a line to standard output for every topic and flushes before returning, so
//! `taskmaster | worker > done.jsonl` works. A nacked line is handed out again by this process (after
//! its delay); there are no leases and no groups, and nothing outlives the process.

mod backend;
mod batch;
mod consumer;
mod group;
mod journal;
mod lock;
mod reader;
mod stdio;
mod topic;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::BusUrl;
use crate::{Backend, BusError};

pub(crate) use backend::FileBackend;

/// The options of a `file://` bus, taken from its URL.
#[derive(Debug, Clone)]
pub(crate) struct FileOptions {
    pub(crate) lease: Duration,
    pub(crate) fsync: bool,
    pub(crate) poll: Duration,
    pub(crate) partial_wait: Duration,
    pub(crate) compact_at: u64,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            lease: Duration::from_secs(30),
            fsync: false,
            poll: Duration::from_millis(25),
            partial_wait: Duration::from_secs(1),
            compact_at: 8 * 1024 * 1024,
        }
    }
}

impl FileOptions {
    fn from_url(url: &mut BusUrl) -> Result<FileOptions, BusError> {
        let mut options = FileOptions::default();
        if let Some(lease) = url.take_duration("lease")? {
            if lease < Duration::from_millis(10) {
                return Err(url.error(format!(
                    "option lease={lease:?} is too short to do any work in; use 10ms or more (30s is usual)"
                )));
            }
            options.lease = lease;
        }
        if let Some(fsync) = url.take_bool("fsync")? {
            options.fsync = fsync;
        }
        if let Some(poll) = url.take_duration("poll")? {
            options.poll = poll.max(Duration::from_millis(1));
        }
        if let Some(wait) = url.take_duration("partial_wait")? {
            options.partial_wait = wait;
        }
        if let Some(bytes) = url.take_parsed::<u64>("compact_at")? {
            options.compact_at = bytes.max(1024);
        }
        Ok(options)
    }
}

/// Opens a `file://DIR` bus: creates `DIR` when missing and checks it can be written.
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    let dir = directory(url)?;
    let options = FileOptions::from_url(url)?;
    prepare_directory(&dir)?;
    Ok(Arc::new(FileBackend::new(dir, options)))
}

/// Opens the `stdio:` bus.
pub(crate) async fn connect_stdio(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    let rest = url.body().trim_start_matches('/');
    if !rest.is_empty() {
        return Err(url.error(format!(
            "stdio: takes no path (got {rest:?}); write just stdio:"
        )));
    }
    Ok(Arc::new(stdio::StdioBackend::new()))
}

/// The directory of a `file:` URL: `file://./data`, `file://data`, `file:///abs`, or `file:data`.
fn directory(url: &BusUrl) -> Result<PathBuf, BusError> {
    let body = url.body();
    let path = body.strip_prefix("//").unwrap_or(body);
    if path.is_empty() {
        return Err(url.error(
            "it names no directory; write file://./data (relative) or file:///var/lib/taskbus (absolute)",
        ));
    }
    Ok(PathBuf::from(path))
}

/// Creates `dir` and its `.groups` folder, and proves a file can be created there.
fn prepare_directory(dir: &Path) -> Result<(), BusError> {
    if dir.exists() && !dir.is_dir() {
        return Err(BusError::Io {
            action: "cannot use as the bus directory",
            path: dir.to_owned(),
            source: std::io::Error::other("it exists and is not a directory"),
            hint: "; point file:// at a directory (it is created when missing)".to_owned(),
        });
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| BusError::io("cannot create the bus directory", dir, e))?;
    let groups = dir.join(".groups");
    std::fs::create_dir_all(&groups)
        .map_err(|e| BusError::io("cannot write to the bus directory", dir, e))?;
    let probe = groups.join(format!(".probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| BusError::io("cannot write to the bus directory", dir, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Milliseconds since the Unix epoch: lease deadlines are wall-clock times shared by processes.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `duration` in whole milliseconds (at least 0), saturating.
pub(crate) fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir_of(url: &str) -> Result<PathBuf, BusError> {
        directory(&BusUrl::parse(url)?)
    }

    #[test]
    fn url_forms() {
        assert_eq!(dir_of("file://./data").unwrap(), PathBuf::from("./data"));
        assert_eq!(dir_of("file://data").unwrap(), PathBuf::from("data"));
        assert_eq!(
            dir_of("file:///abs/path").unwrap(),
            PathBuf::from("/abs/path")
        );
        assert_eq!(dir_of("file:data?lease=1s").unwrap(), PathBuf::from("data"));
        let err = dir_of("file://").unwrap_err().to_string();
        assert!(err.contains("file://./data"), "{err}");
    }

    #[test]
    fn options() {
        let mut url =
            BusUrl::parse("file://d?lease=2s&fsync=true&poll=5ms&partial_wait=100ms").unwrap();
        let o = FileOptions::from_url(&mut url).unwrap();
        url.finish().unwrap();
        assert_eq!(o.lease, Duration::from_secs(2));
        assert!(o.fsync);
        assert_eq!(o.poll, Duration::from_millis(5));
        assert_eq!(o.partial_wait, Duration::from_millis(100));
        let mut url = BusUrl::parse("file://d?lease=1ms").unwrap();
        assert!(FileOptions::from_url(&mut url).is_err());
    }
}
