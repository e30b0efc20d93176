//! The run journals: one append-only file of [`Record`]s per run, `STATE/runs/WORKFLOW/RUN.jsonl`,
//! one JSON object per line, the first a `start`. The state directory is locked by the one flow app
//! that writes it; `taskbus flow status` only reads.
//!
//! A line half-written when the app was killed is cut off when the journal is next opened for
//! writing. A run untouched for longer than the retention (`--keep`) is deleted once it is no longer
//! in memory (finished, or of a workflow no longer loaded).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::config::checksum;
use super::rules::{Record, RunKey};
use crate::TaskmasterError;

/// At most this many journal files are kept open.
const MAX_OPEN: usize = 256;

/// The journals of one state directory, locked for writing.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    fsync: bool,
    _lock: File,
    open: HashMap<RunKey, File>,
}

/// A run's journal as read.
#[derive(Debug, Clone)]
pub struct RunFile {
    /// The file.
    pub path: PathBuf,
    /// Its records.
    pub records: Vec<Record>,
    /// When it last changed.
    pub modified: Option<SystemTime>,
    /// Bytes at the end that are not a whole record (a write cut short).
    pub torn: usize,
}

impl Journal {
    /// Opens (creating) the state directory `dir` and locks it; an error when another flow app holds
    /// the lock. With `fsync`, every append returns only once it is on disk.
    pub fn open(dir: &Path, fsync: bool) -> Result<Journal, TaskmasterError> {
        std::fs::create_dir_all(dir.join("runs"))
            .map_err(|e| TaskmasterError::state("cannot create", dir.join("runs"), e))?;
        let lock_path = dir.join("lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| TaskmasterError::state("cannot open", &lock_path, e))?;
        match super::lock::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => {
                let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(TaskmasterError::state(
                    "cannot lock",
                    &lock_path,
                    std::io::Error::other(format!(
                        "another taskbus flow ({}) uses this state directory; run one flow app per state directory, or give this one another --state",
                        holder.trim()
                    )),
                ));
            }
            Err(e) => return Err(TaskmasterError::state("cannot lock", &lock_path, e)),
        }
        let _ = lock.set_len(0);
        let _ = writeln!(
            lock,
            "pid {} on {}",
            std::process::id(),
            crate::template::hostname()
        );
        Ok(Journal {
            dir: dir.to_owned(),
            fsync,
            _lock: lock,
            open: HashMap::new(),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the journal of `key` lives under the state directory `dir`.
    pub fn path_of(dir: &Path, key: &RunKey) -> PathBuf {
        dir.join("runs")
            .join(slug(&key.workflow))
            .join(format!("{}.jsonl", slug(&key.run)))
    }

    /// True when `key` has a journal.
    pub fn exists(&self, key: &RunKey) -> bool {
        Self::path_of(&self.dir, key).exists()
    }

    /// Appends `records` to their runs' journals: one write per run.
    pub fn append(&mut self, records: &[(RunKey, Record)]) -> Result<(), TaskmasterError> {
        let mut by_run: Vec<(&RunKey, Vec<u8>)> = Vec::new();
        for (key, record) in records {
            let buf = match by_run.iter_mut().find(|(k, _)| *k == key) {
                Some((_, buf)) => buf,
                None => {
                    by_run.push((key, Vec::new()));
                    &mut by_run.last_mut().expect("just pushed").1
                }
            };
            serde_json::to_writer(&mut *buf, record).map_err(|e| {
                TaskmasterError::state("cannot encode", &self.dir, std::io::Error::other(e))
            })?;
            buf.push(b'\n');
        }
        let fsync = self.fsync;
        for (key, bytes) in by_run {
            let path = Self::path_of(&self.dir, key);
            let file = self.file(key, &path)?;
            file.write_all(&bytes)
                .map_err(|e| TaskmasterError::state("cannot write", &path, e))?;
            if fsync {
                file.sync_data()
                    .map_err(|e| TaskmasterError::state("cannot sync", &path, e))?;
            }
        }
        Ok(())
    }

    fn file(&mut self, key: &RunKey, path: &Path) -> Result<&mut File, TaskmasterError> {
        if !self.open.contains_key(key) {
            if self.open.len() >= MAX_OPEN {
                // Many runs at once: keep file descriptors bounded; files are opened again as needed.
                self.open.clear();
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| TaskmasterError::state("cannot create", parent, e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| TaskmasterError::state("cannot open", path, e))?;
            self.open.insert(key.clone(), file);
        }
        Ok(self.open.get_mut(key).expect("inserted above"))
    }

    /// Closes the file of a run no longer written (it is opened again if needed).
    pub fn close(&mut self, key: &RunKey) {
        self.open.remove(key);
    }

    /// Reads the journal of `key`, cutting off a torn last line.
    pub fn load(&mut self, key: &RunKey) -> Result<Option<RunFile>, TaskmasterError> {
        let path = Self::path_of(&self.dir, key);
        if !path.exists() {
            return Ok(None);
        }
        self.close(key);
        let file = read_run(&path)?;
        repair(&file)?;
        Ok(Some(file))
    }

    /// Reads every journal of `workflow` that does not end with an `end` record (cutting off torn
    /// last lines); also returns how many ended ones were left unread.
    pub fn load_workflow(
        &mut self,
        workflow: &str,
    ) -> Result<(Vec<RunFile>, usize), TaskmasterError> {
        let dir = self.dir.join("runs").join(slug(workflow));
        let mut out = Vec::new();
        let mut ended = 0;
        for path in list_jsonl(&dir)? {
            if ends_with_end(&path) {
                ended += 1;
                continue;
            }
            let file = read_run(&path)?;
            repair(&file)?;
            out.push(file);
        }
        Ok((out, ended))
    }

    /// Deletes journals last changed before `now - keep` whose run `in_memory` says is not held.
    pub fn prune(
        &mut self,
        keep: Duration,
        in_memory: impl Fn(&Path) -> bool,
    ) -> Result<usize, TaskmasterError> {
        let Some(before) = SystemTime::now().checked_sub(keep) else {
            return Ok(0);
        };
        let mut removed = 0;
        for path in all_runs(&self.dir)? {
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < before);
            if old && !in_memory(&path) {
                std::fs::remove_file(&path)
                    .map_err(|e| TaskmasterError::state("cannot remove", &path, e))?;
                removed += 1;
            }
        }
        self.open
            .retain(|k, _| Self::path_of(&self.dir, k).exists());
        Ok(removed)
    }
}

/// Every run journal under the state directory `dir`.
pub fn all_runs(dir: &Path) -> Result<Vec<PathBuf>, TaskmasterError> {
    let runs = dir.join("runs");
    if !runs.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(&runs).map_err(|e| TaskmasterError::state("cannot list", &runs, e))?;
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            out.extend(list_jsonl(&entry.path())?);
        }
    }
    Ok(out)
}

fn list_jsonl(dir: &Path) -> Result<Vec<PathBuf>, TaskmasterError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| TaskmasterError::state("cannot list", dir, e))?;
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}

/// Reads one journal. A last line that is not a whole record is left out (and counted in `torn`);
/// a bad line before the last is an error naming the file and line.
pub fn read_run(path: &Path) -> Result<RunFile, TaskmasterError> {
    let bytes = std::fs::read(path).map_err(|e| TaskmasterError::state("cannot read", path, e))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut records = Vec::new();
    let mut good = 0;
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let complete = line.ends_with(b"\n");
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        if text.iter().all(u8::is_ascii_whitespace) {
            good += line.len();
            continue;
        }
        match serde_json::from_slice::<Record>(text) {
            Ok(r) if complete => {
                records.push(r);
                good += line.len();
            }
            _ if last => break,
            Ok(_) => unreachable!("only the last line can lack its newline"),
            Err(e) => {
                return Err(TaskmasterError::state(
                    "cannot use",
                    path,
                    std::io::Error::other(format!(
                    "line {} is not a journal record ({e}); move the file away to forget this run",
                    i + 1
                )),
                ))
            }
        }
    }
    Ok(RunFile {
        path: path.to_owned(),
        records,
        modified,
        torn: bytes.len() - good,
    })
}

/// True when the last whole line of the journal at `path` is an `end` record (read from the end of
/// the file, so a long finished run costs one small read).
pub fn ends_with_end(path: &Path) -> bool {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let Ok(len) = f.seek(SeekFrom::End(0)) else {
        return false;
    };
    let start = len.saturating_sub(4096);
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut tail).is_err() {
        return false;
    }
    let Some(body) = tail.strip_suffix(b"\n") else {
        return false;
    };
    let line = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    matches!(
        serde_json::from_slice::<Record>(line),
        Ok(Record::End { .. })
    )
}

/// Cuts a torn last line off the file.
fn repair(file: &RunFile) -> Result<(), TaskmasterError> {
    if file.torn == 0 {
        return Ok(());
    }
    tracing::warn!(path = %file.path.display(), bytes = file.torn, "cutting off a journal record half-written when the app stopped");
    let len = std::fs::metadata(&file.path)
        .map_err(|e| TaskmasterError::state("cannot read", &file.path, e))?
        .len();
    let f = OpenOptions::new()
        .write(true)
        .open(&file.path)
        .map_err(|e| TaskmasterError::state("cannot open", &file.path, e))?;
    f.set_len(len - file.torn as u64)
        .map_err(|e| TaskmasterError::state("cannot truncate", &file.path, e))
}

/// A file name for `s`: itself when it is plain, else its plain characters and a hash.
fn slug(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == s && !s.starts_with('.') && !s.is_empty() && s.len() <= 100 {
        return clean;
    }
    let head: String = clean.trim_start_matches('.').chars().take(80).collect();
    format!("{head}-{:08x}", checksum(s.as_bytes()) as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_plain_and_distinct() {
        assert_eq!(slug("daily.toml"), "daily.toml");
        let a = slug("sub/daily.toml");
        assert!(a.starts_with("sub_daily.toml-"), "{a}");
        assert_ne!(slug("sub/daily.toml"), slug("sub_daily.toml"));
        assert!(!slug("../x").starts_with('.'));
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), false).unwrap();
        assert!(
            Journal::open(dir.path(), false).is_err(),
            "one app per directory"
        );
        let key = RunKey {
            workflow: "w.toml".into(),
            run: "r1".into(),
        };
        let at = "2024-01-02T00:00:00Z".parse().unwrap();
        let start = Record::Start {
            at,
            workflow: key.workflow.clone(),
            run: key.run.clone(),
            scheduled: at,
            time: at,
            via: "test".into(),
        };
        j.append(&[
            (key.clone(), start.clone()),
            (key.clone(), Record::Sent { at, n: 0 }),
        ])
        .unwrap();
        let path = Journal::path_of(dir.path(), &key);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"ev\":\"sent\",\"at\":\"2024").unwrap();
        let read = j.load(&key).unwrap().unwrap();
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.records[0], start);
        assert!(read.torn > 0);
        assert_eq!(read_run(&path).unwrap().torn, 0, "cut off");
        j.append(&[(key.clone(), Record::Sent { at, n: 1 })])
            .unwrap();
        assert_eq!(read_run(&path).unwrap().records.len(), 3);
        assert!(!ends_with_end(&path));
        let end = Record::End {
            at,
            outcome: "completed".into(),
        };
        j.append(&[(key.clone(), end)]).unwrap();
        assert!(ends_with_end(&path));
        assert_eq!(
            j.load_workflow("w.toml").unwrap().1,
            1,
            "an ended run is not read"
        );
        j.append(&[(key.clone(), Record::Sent { at, n: 2 })])
            .unwrap();
        assert!(!ends_with_end(&path), "a later record reopens the run");
        assert_eq!(j.load_workflow("w.toml").unwrap().0.len(), 1);
        drop(j);
        assert!(
            Journal::open(dir.path(), false).is_ok(),
            "the lock goes with the app"
        );
    }
}
