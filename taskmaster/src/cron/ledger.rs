//! The tick ledger: which replica sends a tick, and which tick a rule last sent.
//!
//! Every replica of `taskbus cron` runs every rule. Before sending a tick, a replica *claims* it in the
//! ledger; only the replica whose claim wins sends it, then marks it *sent*. After a restart, a rule
//! resumes from its last sent tick, so missed ticks are seen and handled by the catch-up policy.
//!
//! [`DirLedger`] keeps this in a directory (for the file bus, `DIR/.cron` inside the bus directory, so
//! replicas sharing the bus share the ledger): `RULE/20240102T150000Z.claim` is created with
//! `O_CREAT|O_EXCL` — exactly one replica succeeds — and `RULE/20240102T150000Z.sent` is written after
//! the bus confirmed the task. A claim older than the lease without a `.sent` belongs to a replica that
//! died before sending: another replica takes it over (an atomic rename decides which one) and sends
//! the tick. Files older than the catch-up window are pruned, keeping the newest `.sent`.
//!
//! On brokers that de-duplicate (JetStream), the deterministic task id of each tick protects against
//! the rare duplicate a ledger cannot rule out (a replica that stalls longer than the lease).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::TaskmasterError;

/// The outcome of [`TickLedger::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica sends the tick.
    Won,
    /// The tick was already sent (or is older than what the ledger keeps).
    Done,
    /// Another replica claimed it and has not said it sent it yet; ask again after the lease.
    Busy,
}

/// Where replicas agree on who sends a tick, and where the last sent tick of a rule is kept.
#[async_trait]
pub trait TickLedger: Send + Sync + fmt::Debug {
    /// The newest tick of `rule` marked sent.
    async fn last_sent(&self, rule: &str) -> Result<Option<DateTime<Utc>>, TaskmasterError>;

    /// Tries to become the replica that sends `tick` of `rule`.
    async fn claim(&self, rule: &str, tick: DateTime<Utc>) -> Result<Claim, TaskmasterError>;

    /// Records that `tick` of `rule` was sent (the bus confirmed it).
    async fn mark_sent(&self, rule: &str, tick: DateTime<Utc>) -> Result<(), TaskmasterError>;

    /// Gives up a won claim without sending (shutting down while the bus is unreachable).
    async fn release(&self, rule: &str, tick: DateTime<Utc>) -> Result<(), TaskmasterError>;

    /// Forgets ticks of `rule` before `before`, keeping the newest sent one; older ticks are `Done`.
    async fn prune(&self, rule: &str, before: DateTime<Utc>) -> Result<(), TaskmasterError>;
}

/// A ledger in a directory shared by the replicas (see the module docs).
#[derive(Debug, Clone)]
pub struct DirLedger {
    dir: PathBuf,
    lease: Duration,
    owner: String,
}

/// How long a claim without a `.sent` is trusted before another replica takes the tick over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

const TICK_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl DirLedger {
    /// A ledger in `dir` (created when missing) whose claims are trusted for `lease`.
    pub fn new(dir: impl Into<PathBuf>, lease: Duration) -> Result<Self, TaskmasterError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| TaskmasterError::state("cannot create", &dir, e))?;
        let owner = format!("{}:{}", crate::template::hostname(), std::process::id());
        Ok(DirLedger { dir, lease, owner })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn rule_dir(&self, rule: &str) -> Result<PathBuf, TaskmasterError> {
        let dir = self.dir.join(rule);
        std::fs::create_dir_all(&dir)
            .map_err(|e| TaskmasterError::state("cannot create", &dir, e))?;
        Ok(dir)
    }

    fn horizon(&self, dir: &Path) -> Option<DateTime<Utc>> {
        let text = std::fs::read_to_string(dir.join("horizon")).ok()?;
        DateTime::parse_from_rfc3339(text.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    fn create_claim(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        writeln!(
            f,
            "claimed by {} at {}",
            self.owner,
            Utc::now().to_rfc3339()
        )
    }

    fn take_over_stale(&self, claim: &Path) -> Result<Claim, TaskmasterError> {
        let age = std::fs::metadata(claim)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        if age.map_or(true, |a| a < self.lease) {
            return Ok(Claim::Busy);
        }
        let stale = claim.with_extension(format!("stale-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(claim, &stale) {
            Ok(()) => {
                let _ = std::fs::remove_file(&stale);
                tracing::warn!(claim = %claim.display(), "taking over a tick claimed more than the lease ago and never sent");
                match self.create_claim(claim) {
                    Ok(()) => Ok(Claim::Won),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Claim::Busy),
                    Err(e) => Err(TaskmasterError::state("cannot create", claim, e)),
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Claim::Busy),
            Err(e) => Err(TaskmasterError::state("cannot take over", claim, e)),
        }
    }
}

fn tick_name(tick: DateTime<Utc>) -> String {
    tick.format(TICK_FORMAT).to_string()
}

fn parse_tick(stem: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(stem, TICK_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// The ticks in `dir`: file name stem → extension.
fn list(dir: &Path) -> Result<Vec<(DateTime<Utc>, String, PathBuf)>, TaskmasterError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| TaskmasterError::state("cannot list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((stem, ext)) = name.split_once('.') {
            if let Some(tick) = parse_tick(stem) {
                out.push((tick, ext.to_owned(), path));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl TickLedger for DirLedger {
    async fn last_sent(&self, rule: &str) -> Result<Option<DateTime<Utc>>, TaskmasterError> {
        let dir = self.rule_dir(rule)?;
        Ok(list(&dir)?
            .into_iter()
            .filter(|(_, ext, _)| ext == "sent")
            .map(|(t, _, _)| t)
            .max())
    }

    async fn claim(&self, rule: &str, tick: DateTime<Utc>) -> Result<Claim, TaskmasterError> {
        let dir = self.rule_dir(rule)?;
        if self.horizon(&dir).is_some_and(|h| tick < h) {
            return Ok(Claim::Done);
        }
        let name = tick_name(tick);
        let sent = dir.join(format!("{name}.sent"));
        let claim = dir.join(format!("{name}.claim"));
        if sent.exists() {
            return Ok(Claim::Done);
        }
        match self.create_claim(&claim) {
            Ok(()) => Ok(Claim::Won),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if sent.exists() {
                    Ok(Claim::Done)
                } else {
                    self.take_over_stale(&claim)
                }
            }
            Err(e) => Err(TaskmasterError::state("cannot create", &claim, e)),
        }
    }

    async fn mark_sent(&self, rule: &str, tick: DateTime<Utc>) -> Result<(), TaskmasterError> {
        let dir = self.rule_dir(rule)?;
        let name = tick_name(tick);
        let sent = dir.join(format!("{name}.sent"));
        let text = format!("sent by {} at {}\n", self.owner, Utc::now().to_rfc3339());
        std::fs::write(&sent, text)
            .map_err(|e| TaskmasterError::state("cannot write", &sent, e))?;
        let _ = std::fs::remove_file(dir.join(format!("{name}.claim")));
        Ok(())
    }

    async fn release(&self, rule: &str, tick: DateTime<Utc>) -> Result<(), TaskmasterError> {
        let claim = self
            .rule_dir(rule)?
            .join(format!("{}.claim", tick_name(tick)));
        match std::fs::remove_file(&claim) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(TaskmasterError::state("cannot remove", &claim, e))
            }
            _ => Ok(()),
        }
    }

    async fn prune(&self, rule: &str, before: DateTime<Utc>) -> Result<(), TaskmasterError> {
        let dir = self.rule_dir(rule)?;
        if self.horizon(&dir).is_some_and(|h| h >= before) {
            return Ok(());
        }
        let files = list(&dir)?;
        let newest_sent = files
            .iter()
            .filter(|(_, e, _)| e == "sent")
            .map(|(t, _, _)| *t)
            .max();
        for (tick, ext, path) in files {
            if tick < before && !(ext == "sent" && Some(tick) == newest_sent) {
                let _ = std::fs::remove_file(path);
            }
        }
        let path = dir.join("horizon");
        std::fs::write(&path, before.to_rfc3339())
            .map_err(|e| TaskmasterError::state("cannot write", &path, e))
    }
}

/// A ledger in memory: for a single replica, or replicas in one process sharing it (tests). Nothing
/// survives a restart, so catch-up starts afresh.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    rules: Mutex<HashMap<String, RuleTicks>>,
}

#[derive(Debug, Default)]
struct RuleTicks {
    /// Tick → sent (false: claimed).
    ticks: BTreeMap<DateTime<Utc>, bool>,
    horizon: Option<DateTime<Utc>>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, rule: &str, f: impl FnOnce(&mut RuleTicks) -> R) -> R {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        f(rules.entry(rule.to_owned()).or_default())
    }
}

#[async_trait]
impl TickLedger for MemoryLedger {
    async fn last_sent(&self, rule: &str) -> Result<Option<DateTime<Utc>>, TaskmasterError> {
        Ok(self.with(rule, |r| {
            r.ticks
                .iter()
                .rev()
                .find(|(_, sent)| **sent)
                .map(|(t, _)| *t)
        }))
    }

    async fn claim(&self, rule: &str, tick: DateTime<Utc>) -> Result<Claim, TaskmasterError> {
        Ok(self.with(rule, |r| match r.ticks.get(&tick) {
            _ if r.horizon.is_some_and(|h| tick < h) => Claim::Done,
            Some(true) => Claim::Done,
            Some(false) => Claim::Busy,
            None => {
                r.ticks.insert(tick, false);
                Claim::Won
            }
        }))
    }

    async fn mark_sent(&self, rule: &str, tick: DateTime<Utc>) -> Result<(), TaskmasterError> {
        self.with(rule, |r| r.ticks.insert(tick, true));
        Ok(())
    }

    async fn release(&self, rule: &str, tick: DateTime<Utc>) -> Result<(), TaskmasterError> {
        self.with(rule, |r| r.ticks.remove(&tick));
        Ok(())
    }

    async fn prune(&self, rule: &str, before: DateTime<Utc>) -> Result<(), TaskmasterError> {
        self.with(rule, |r| {
            let newest = r.ticks.iter().rev().find(|(_, s)| **s).map(|(t, _)| *t);
            r.ticks.retain(|t, _| *t >= before || Some(*t) == newest);
            r.horizon = r.horizon.max(Some(before));
        });
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[tokio::test]
    async fn one_claim_wins_among_replicas_sharing_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tick = utc("2024-01-02T10:00:00Z");
        let mut handles = Vec::new();
        for _ in 0..8 {
            let ledger = DirLedger::new(dir.path(), DEFAULT_LEASE).unwrap();
            handles.push(tokio::spawn(async move {
                ledger.claim("r", tick).await.unwrap()
            }));
        }
        let mut outcomes = Vec::new();
        for h in handles {
            outcomes.push(h.await.unwrap());
        }
        assert_eq!(
            outcomes.iter().filter(|c| **c == Claim::Won).count(),
            1,
            "{outcomes:?}"
        );
        let a = DirLedger::new(dir.path(), DEFAULT_LEASE).unwrap();
        assert_eq!(a.claim("r", tick).await.unwrap(), Claim::Busy);
        a.mark_sent("r", tick).await.unwrap();
        assert_eq!(a.claim("r", tick).await.unwrap(), Claim::Done);
        assert_eq!(a.last_sent("r").await.unwrap(), Some(tick));
        assert_eq!(a.last_sent("other").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_stale_claim_is_taken_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let tick = utc("2024-01-02T10:00:00Z");
        let dead = DirLedger::new(dir.path(), Duration::from_millis(50)).unwrap();
        assert_eq!(dead.claim("r", tick).await.unwrap(), Claim::Won);
        let b = DirLedger::new(dir.path(), Duration::from_millis(50)).unwrap();
        assert_eq!(b.claim("r", tick).await.unwrap(), Claim::Busy);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(b.claim("r", tick).await.unwrap(), Claim::Won);
        assert_eq!(
            b.claim("r", tick).await.unwrap(),
            Claim::Busy,
            "the new claim is fresh"
        );
        b.release("r", tick).await.unwrap();
        assert_eq!(b.claim("r", tick).await.unwrap(), Claim::Won);
    }

    #[tokio::test]
    async fn prune_keeps_the_newest_sent_and_refuses_older_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let l = DirLedger::new(dir.path(), DEFAULT_LEASE).unwrap();
        for h in 0..5 {
            let t = utc("2024-01-02T00:00:00Z") + chrono::Duration::hours(h);
            assert_eq!(l.claim("r", t).await.unwrap(), Claim::Won);
            l.mark_sent("r", t).await.unwrap();
        }
        l.prune("r", utc("2024-01-02T10:00:00Z")).await.unwrap();
        assert_eq!(
            l.last_sent("r").await.unwrap(),
            Some(utc("2024-01-02T04:00:00Z"))
        );
        let left = std::fs::read_dir(dir.path().join("r")).unwrap().count();
        assert_eq!(left, 2, "the newest .sent and the horizon");
        assert_eq!(
            l.claim("r", utc("2024-01-02T09:00:00Z")).await.unwrap(),
            Claim::Done
        );
        assert_eq!(
            l.claim("r", utc("2024-01-02T10:00:00Z")).await.unwrap(),
            Claim::Won
        );
    }
}
