//! Appending to a topic file: whole lines, batched, under the file's lock.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::batch::Batch;
use super::lock;
use crate::BusError;

/// Which file a path named when it was looked at: a file deleted and created again is another file,
/// even when the file system reuses its inode number (the birth time differs where it is known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// Birth time in nanoseconds since the epoch, 0 where the file system does not keep it.
    pub(crate) born: u64,
}

impl FileId {
    pub(crate) fn of(meta: &Metadata) -> FileId {
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            born,
        }
    }

    /// The file `path` names now, or `None` when there is none.
    pub(crate) fn at(path: &Path) -> io::Result<Option<(FileId, u64)>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some((FileId::of(&meta), meta.len()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Takes an exclusive lock of `file`, waiting on a blocking thread when another process holds it.
pub(crate) async fn lock_exclusive(file: &Arc<File>) -> io::Result<()> {
    if lock::try_lock_exclusive(file)? {
        return Ok(());
    }
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || lock::lock_exclusive(&file))
        .await
        .map_err(io::Error::other)?
}

type Reply = oneshot::Sender<Result<(), (io::ErrorKind, String)>>;

/// The appender of one topic in one process. Concurrent sends are written together: the first one
/// to get the file writes every line queued at that moment with one `write`.
pub(crate) struct TopicWriter {
    path: PathBuf,
    fsync: bool,
    queue: Batch<(Bytes, Reply)>,
    file: tokio::sync::Mutex<Option<Appender>>,
    /// Woken after each write, for consumers of this topic in this process.
    pub(crate) appended: Arc<Notify>,
}

struct Appender {
    file: Arc<File>,
    /// The length of the file after our last write: if it is still that, the file ends with our
    /// newline and the last byte need not be read.
    len_after_write: u64,
}

impl TopicWriter {
    pub(crate) fn new(path: PathBuf, fsync: bool) -> TopicWriter {
        TopicWriter {
            path,
            fsync,
            queue: Batch::new(),
            file: tokio::sync::Mutex::new(None),
            appended: Arc::new(Notify::new()),
        }
    }

    /// Appends `payload` as one line and returns once it is written (and synced, with `fsync`).
    pub(crate) async fn send(self: &Arc<Self>, payload: Bytes) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        if self.queue.push((payload, tx)) {
            // The flusher is a task of its own, so a caller giving up half way (a timeout around
            // `send`) cannot leave the file locked or its line half handled.
            let writer = Arc::clone(self);
            tokio::spawn(async move { writer.flush().await });
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, message))) => Err(BusError::io(
                "cannot append to",
                &self.path,
                io::Error::new(kind, message),
            )),
            Err(_) => Err(BusError::Closed(format!(
                "the writer of {}",
                self.path.display()
            ))),
        }
    }

    /// Writes batches until nothing is queued.
    async fn flush(&self) {
        let mut file = self.file.lock().await;
        loop {
            // Let the tasks that are about to send queue their lines first: bigger batches.
            tokio::task::yield_now().await;
            let Some(batch) = self.queue.next_batch() else {
                return;
            };
            let mut data = Vec::with_capacity(batch.iter().map(|(p, _)| p.len() + 1).sum());
            for (payload, _) in &batch {
                data.extend_from_slice(payload);
                data.push(b'\n');
            }
            let result = self.append(&mut file, data).await;
            if result.is_ok() {
                self.appended.notify_waiters();
            }
            for (_, reply) in batch {
                let _ = reply.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| (e.kind(), e.to_string())),
                );
            }
        }
    }

    async fn append(&self, slot: &mut Option<Appender>, mut data: Vec<u8>) -> io::Result<()> {
        for _ in 0..5 {
            if slot.is_none() {
                *slot = Some(self.open()?);
            }
            let Some(app) = slot.as_mut() else { continue };
            lock_exclusive(&app.file).await?;
            let written = app.write_locked(&self.path, &mut data);
            let _ = lock::unlock(&app.file);
            match written {
                Ok(true) => {
                    if self.fsync {
                        let file = Arc::clone(&app.file);
                        tokio::task::spawn_blocking(move || file.sync_data())
                            .await
                            .map_err(io::Error::other)??;
                    }
                    return Ok(());
                }
                Ok(false) => *slot = None, // the path names another file now: open that one
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "the file was replaced again and again while appending; is something deleting it?",
        ))
    }

    fn open(&self) -> io::Result<Appender> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)?;
        Ok(Appender {
            file: Arc::new(file),
            len_after_write: u64::MAX,
        })
    }
}

impl Appender {
    /// Writes `data` (whole lines) with one `write`, holding the lock. `Ok(false)` when the path no
    /// longer names our open file (deleted or replaced), so nothing was written.
    fn write_locked(&mut self, path: &Path, data: &mut Vec<u8>) -> io::Result<bool> {
        let meta = self.file.metadata()?;
        if meta.nlink() == 0 {
            // Deleted, or another file was renamed over it: the path names another file (or none).
            tracing::warn!(path = %path.display(),
                "topic file was deleted or replaced; appending to a new file");
            return Ok(false);
        }
        let len = meta.len();
        if len > 0 && len != self.len_after_write && !self.ends_with_newline(len)? {
            tracing::warn!(path = %path.display(),
                "the last line of the topic file has no newline (a producer died mid-write?); \
                 ending it so the new lines stay whole");
            data.insert(0, b'\n');
        }
        if let Err(e) = (&*self.file).write_all(data) {
            // Take back a partial write, so no half line is left for consumers.
            let _ = self.file.set_len(len);
            return Err(e);
        }
        self.len_after_write = len + data.len() as u64;
        Ok(true)
    }

    fn ends_with_newline(&self, len: u64) -> io::Result<bool> {
        let mut last = [0u8; 1];
        self.file.read_exact_at(&mut last, len - 1)?;
        Ok(last[0] == b'\n')
    }
}
