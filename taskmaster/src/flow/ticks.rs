//! The cron phases of the loaded workflows, driven by the [`Cron`] state machine of `taskbus cron`,
//! and the last tick each one handled, kept in `STATE/ticks.json` so a restart catches up by each
//! phase's `catch_up` policy instead of skipping ticks silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::workflow::{Trigger, Workflow};
use crate::cron::{Cron, Rule, DEFAULT_GRACE};
use crate::TaskmasterError;

/// A tick due: which workflow's phase, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// The workflow.
    pub workflow: String,
    /// The phase index.
    pub phase: usize,
    /// The phase name.
    pub name: String,
    /// The tick.
    pub tick: DateTime<Utc>,
}

/// The schedules of every workflow's cron phases.
#[derive(Debug)]
pub struct Ticks {
    path: PathBuf,
    last: BTreeMap<String, BTreeMap<String, DateTime<Utc>>>,
    crons: BTreeMap<String, (Cron, Vec<usize>)>,
    grace: std::time::Duration,
}

impl Ticks {
    /// Reads the last ticks kept in `dir/ticks.json`.
    pub fn open(dir: &Path) -> Result<Ticks, TaskmasterError> {
        let path = dir.join("ticks.json");
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                TaskmasterError::state(
                    "cannot use",
                    &path,
                    std::io::Error::other(format!(
                        "{e}; remove the file to start every schedule from now"
                    )),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(TaskmasterError::state("cannot read", &path, e)),
        };
        Ok(Ticks {
            path,
            last,
            crons: BTreeMap::new(),
            grace: DEFAULT_GRACE,
        })
    }

    /// How late a tick may be and still count as on time.
    pub fn set_grace(&mut self, grace: std::time::Duration) {
        self.grace = grace;
    }

    /// (Re)builds the schedules of `w`, each resuming after its last handled tick (or from `now`).
    pub fn set_workflow(&mut self, w: &Workflow, now: DateTime<Utc>) {
        let mut rules = Vec::new();
        let mut phases = Vec::new();
        for (i, phase) in w.phases().iter().enumerate() {
            let Trigger::Cron(c) = &phase.trigger else {
                continue;
            };
            rules.push(Rule {
                name: phase.name.clone(),
                schedule: c.schedule.clone(),
                kind: phase.kind.clone(),
                job: phase.job.clone(),
                template: phase.template.clone(),
                offset: phase.offset,
                topic: phase.topic.clone(),
                meta: Vec::new(),
                catch_up: c.catch_up,
                catch_up_window: c.catch_up_window,
            });
            phases.push(i);
        }
        if rules.is_empty() {
            self.crons.remove(w.name());
            return;
        }
        let mut cron = Cron::new(rules, now).grace(self.grace);
        if let Some(last) = self.last.get(w.name()) {
            for (k, &i) in phases.iter().enumerate() {
                if let Some(t) = last.get(&w.phase(i).name) {
                    tracing::info!(workflow = %w.name(), phase = %w.phase(i).name, last = %t, "schedule resumes after its last tick");
                    cron.resume(k, *t);
                }
            }
        }
        self.crons.insert(w.name().to_owned(), (cron, phases));
    }

    /// Forgets the schedules of a workflow no longer loaded.
    pub fn remove_workflow(&mut self, name: &str) {
        self.crons.remove(name);
    }

    /// The ticks due at `now`, oldest first per phase; missed ticks skipped by policy are logged.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Tick> {
        let mut out = Vec::new();
        for (name, (cron, phases)) in &mut self.crons {
            let due = cron.due(now);
            for s in due.skipped {
                tracing::warn!(workflow = %name, phase = %cron.rules()[s.rule].name, first = %s.first, last = %s.last,
                    count = s.count.map_or_else(|| "many".to_owned(), |c| c.to_string()), reason = s.reason,
                    "missed ticks skipped");
            }
            out.extend(due.fires.into_iter().map(|f| Tick {
                workflow: name.clone(),
                phase: phases[f.rule],
                name: cron.rules()[f.rule].name.clone(),
                tick: f.tick,
            }));
        }
        out
    }

    /// When [`Ticks::due`] has something next.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.crons
            .values()
            .filter_map(|(c, _)| c.next_wakeup())
            .min()
    }

    /// Keeps the handled ticks (call once their runs are in the journal).
    pub fn handled(&mut self, ticks: &[Tick]) -> Result<(), TaskmasterError> {
        if ticks.is_empty() {
            return Ok(());
        }
        for t in ticks {
            let slot = self
                .last
                .entry(t.workflow.clone())
                .or_default()
                .entry(t.name.clone())
                .or_insert(t.tick);
            *slot = (*slot).max(t.tick);
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.last).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(|e| TaskmasterError::state("cannot write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| TaskmasterError::state("cannot rename", &self.path, e))
    }
}
