//! The flow state machine: done tasks and cron ticks in, [`Record`]s out. No I/O and no clock of its
//! own. Every decision is a list of records, applied to the state as it is made; the same records,
//! read back from the journal after a restart, rebuild the same state ([`Engine::restore`]), so the
//! journal is the state and nothing else needs saving.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use taskbus_bus::task::meta::keys;
use taskbus_bus::{Meta, Task, TaskResult};

use super::workflow::{RunInfo, Workflow};
use crate::retry::{Decision, RetryRule, RetryRules};

/// A run: a workflow and a run id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunKey {
    /// The workflow's name.
    pub workflow: String,
    /// The run id.
    pub run: String,
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.workflow, self.run)
    }
}

/// One change to a run: a line of its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Record {
    /// The run began.
    Start {
        /// When.
        at: DateTime<Utc>,
        /// The workflow.
        workflow: String,
        /// The run id.
        run: String,
        /// The run's scheduled time (the cron tick), passed down every generation.
        scheduled: DateTime<Utc>,
        /// The time the first phase's templates were rendered at (scheduled plus its offset).
        time: DateTime<Utc>,
        /// What started it: `cron PHASE` or `task ID`.
        via: String,
    },
    /// A task to send (number `n` of the run's outbox): a phase's task, a retry, or a notice to the
    /// failed topic.
    Queue {
        /// When decided.
        at: DateTime<Utc>,
        /// Its number in the run.
        n: u32,
        /// The phase.
        phase: String,
        /// Where it goes.
        topic: String,
        /// The task.
        task: Task,
        /// Not before this time (a retry's backoff).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due: Option<DateTime<Utc>>,
        /// The time the phase's templates were rendered at.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time: Option<DateTime<Utc>>,
        /// A copy of a failed task for the failed topic, not the phase's task.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        notice: bool,
    },
    /// Outbox entry `n` is on the bus.
    Sent {
        /// When the bus confirmed it.
        at: DateTime<Utc>,
        /// The outbox entry.
        n: u32,
    },
    /// A done task of a phase arrived.
    Done {
        /// When it was handled.
        at: DateTime<Utc>,
        /// The phase.
        phase: String,
        /// The done task.
        task: Task,
    },
    /// A phase failed for good.
    Fail {
        /// When.
        at: DateTime<Utc>,
        /// The phase.
        phase: String,
        /// Why.
        reason: String,
    },
    /// The run had nothing left to do when this was written (a later record reopens it): lets a
    /// restart skip reading finished runs.
    End {
        /// When.
        at: DateTime<Utc>,
        /// How it ended (`completed`, `failed: …`, `incomplete: …`).
        outcome: String,
    },
    /// A phase will not run in this run.
    Skip {
        /// When.
        at: DateTime<Utc>,
        /// The phase.
        phase: String,
        /// Why.
        reason: String,
    },
}

impl Record {
    /// When the record was made.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Record::Start { at, .. }
            | Record::Queue { at, .. }
            | Record::Sent { at, .. }
            | Record::Done { at, .. }
            | Record::Fail { at, .. }
            | Record::End { at, .. }
            | Record::Skip { at, .. } => *at,
        }
    }
}

/// Where a phase of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseStatus {
    /// Not started.
    Todo,
    /// Its task is decided but not yet on the bus (or waits for a retry's delay).
    Queued,
    /// Its task is on the bus; no final result yet.
    InProcess,
    /// Completed (`complete`, or `warn`).
    Completed,
    /// Failed for good.
    Failed,
    /// Will not run (a `require` was not met, or a parent was skipped).
    Skipped,
}

impl PhaseStatus {
    /// How status output names it.
    pub fn label(self) -> &'static str {
        match self {
            PhaseStatus::Todo => "to do",
            PhaseStatus::Queued | PhaseStatus::InProcess => "in process",
            PhaseStatus::Completed => "completed",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Skipped => "skipped",
        }
    }

    fn active(self) -> bool {
        matches!(self, PhaseStatus::Queued | PhaseStatus::InProcess)
    }
}

/// One phase in one run.
#[derive(Debug, Clone)]
pub struct PhaseRun {
    /// Where it stands.
    pub status: PhaseStatus,
    /// The attempt of its latest task (0 for the first run).
    pub attempt: u32,
    /// The time its templates were rendered at; its children start from it.
    pub time: Option<DateTime<Utc>>,
    /// When its latest task was decided.
    pub queued: Option<DateTime<Utc>>,
    /// When its latest task is due (a retry).
    pub due: Option<DateTime<Utc>>,
    /// When its latest task was confirmed on the bus.
    pub sent: Option<DateTime<Utc>>,
    /// When a worker started it (from the latest done task).
    pub started: Option<DateTime<Utc>>,
    /// When a worker ended it.
    pub ended: Option<DateTime<Utc>>,
    /// The latest result.
    pub result: Option<TaskResult>,
    /// The latest message.
    pub msg: String,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The done task's meta, once completed: what its children's templates read.
    pub meta: Option<Meta>,
}

impl PhaseRun {
    fn new() -> Self {
        PhaseRun {
            status: PhaseStatus::Todo,
            attempt: 0,
            time: None,
            queued: None,
            due: None,
            sent: None,
            started: None,
            ended: None,
            result: None,
            msg: String::new(),
            reason: None,
            meta: None,
        }
    }
}

/// A task waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The run it belongs to.
    pub key: RunKey,
    /// Its number in the run.
    pub n: u32,
    /// The phase.
    pub phase: String,
    /// Where it goes.
    pub topic: String,
    /// The task.
    pub task: Task,
    /// Not before this time.
    pub due: Option<DateTime<Utc>>,
    /// A notice for the failed topic.
    pub notice: bool,
}

/// The state of one run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run.
    pub key: RunKey,
    /// The workflow version it follows.
    pub workflow: Arc<Workflow>,
    /// Its scheduled time.
    pub scheduled: DateTime<Utc>,
    /// The time its first phase was rendered at.
    pub time: DateTime<Utc>,
    /// When it began.
    pub started: DateTime<Utc>,
    /// What started it.
    pub via: String,
    /// The latest change.
    pub updated: DateTime<Utc>,
    /// By phase index.
    pub phases: Vec<PhaseRun>,
    outbox: BTreeMap<u32, OutboxEntry>,
    next_n: u32,
    active: usize,
    failed: usize,
}

/// How a run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Phases are queued or in process.
    Running,
    /// Every phase it reached completed (or was skipped).
    Completed,
    /// A phase failed for good: the phase and the reason (other branches may still be running).
    Failed {
        /// The first phase (in workflow order) that failed.
        phase: String,
        /// Why.
        reason: String,
    },
    /// Nothing is running, yet a phase waits for parents that did not run in this run.
    Incomplete {
        /// A waiting phase.
        phase: String,
        /// The parents it waits for.
        waiting_for: Vec<String>,
    },
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunOutcome::Running => f.write_str("running"),
            RunOutcome::Completed => f.write_str("completed"),
            RunOutcome::Failed { phase, reason } => write!(f, "failed: phase {phase}: {reason}"),
            RunOutcome::Incomplete { phase, waiting_for } => write!(
                f,
                "incomplete: phase {phase} waits for {}, which did not run",
                waiting_for.join(", ")
            ),
        }
    }
}

impl Run {
    fn new(workflow: Arc<Workflow>, record: &Record) -> Option<Run> {
        let Record::Start {
            at,
            workflow: name,
            run,
            scheduled,
            time,
            via,
        } = record
        else {
            return None;
        };
        Some(Run {
            key: RunKey {
                workflow: name.clone(),
                run: run.clone(),
            },
            phases: vec![PhaseRun::new(); workflow.phases().len()],
            workflow,
            scheduled: *scheduled,
            time: *time,
            started: *at,
            via: via.clone(),
            updated: *at,
            outbox: BTreeMap::new(),
            next_n: 0,
            active: 0,
            failed: 0,
        })
    }

    /// The tasks decided and not yet confirmed on the bus.
    pub fn outbox(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.outbox.values()
    }

    /// True when nothing is queued, in process or waiting to be sent.
    pub fn is_finished(&self) -> bool {
        self.active == 0 && self.outbox.is_empty()
    }

    /// How the run stands.
    pub fn outcome(&self) -> RunOutcome {
        let w = &self.workflow;
        if self.failed > 0 {
            let i = w
                .order()
                .iter()
                .copied()
                .find(|i| self.phases[*i].status == PhaseStatus::Failed)
                .unwrap_or(0);
            return RunOutcome::Failed {
                phase: w.phase(i).name.clone(),
                reason: self.phases[i].reason.clone().unwrap_or_default(),
            };
        }
        if !self.is_finished() {
            return RunOutcome::Running;
        }
        for &i in w.order() {
            if self.phases[i].status != PhaseStatus::Todo {
                continue;
            }
            let parents = &w.phase(i).parents;
            if parents
                .iter()
                .any(|p| self.phases[*p].status == PhaseStatus::Completed)
            {
                return RunOutcome::Incomplete {
                    phase: w.phase(i).name.clone(),
                    waiting_for: parents
                        .iter()
                        .filter(|p| self.phases[**p].status != PhaseStatus::Completed)
                        .map(|p| w.phase(*p).name.clone())
                        .collect(),
                };
            }
        }
        RunOutcome::Completed
    }

    fn set_status(&mut self, i: usize, status: PhaseStatus) {
        let old = self.phases[i].status;
        self.active -= usize::from(old.active());
        self.failed -= usize::from(old == PhaseStatus::Failed);
        self.active += usize::from(status.active());
        self.failed += usize::from(status == PhaseStatus::Failed);
        self.phases[i].status = status;
    }

    fn info(&self) -> RunInfo<'_> {
        RunInfo {
            run: &self.key.run,
            scheduled: self.scheduled,
        }
    }

    /// Applies one record. A record naming a phase the workflow no longer has is ignored (its
    /// outbox entries are still sent).
    fn apply(&mut self, record: &Record) -> Result<(), String> {
        self.updated = self.updated.max(record.at());
        let index = |phase: &str| {
            self.workflow.index_of(phase).ok_or_else(|| {
                format!(
                    "phase {phase:?} is not in workflow {} any more; its record is ignored",
                    self.key.workflow
                )
            })
        };
        match record {
            Record::Start { .. } | Record::End { .. } => Ok(()),
            Record::Queue {
                at,
                n,
                phase,
                topic,
                task,
                due,
                time,
                notice,
            } => {
                self.next_n = self.next_n.max(n + 1);
                self.outbox.insert(
                    *n,
                    OutboxEntry {
                        key: self.key.clone(),
                        n: *n,
                        phase: phase.clone(),
                        topic: topic.clone(),
                        task: task.clone(),
                        due: *due,
                        notice: *notice,
                    },
                );
                if *notice {
                    return Ok(());
                }
                let i = index(phase)?;
                self.set_status(i, PhaseStatus::Queued);
                let p = &mut self.phases[i];
                p.attempt = task.attempt();
                p.queued = Some(*at);
                p.due = *due;
                p.sent = None;
                if time.is_some() {
                    p.time = *time;
                }
                Ok(())
            }
            Record::Sent { at, n } => {
                let Some(entry) = self.outbox.remove(n) else {
                    return Ok(());
                };
                if entry.notice {
                    return Ok(());
                }
                let i = index(&entry.phase)?;
                if self.phases[i].status == PhaseStatus::Queued
                    && self.phases[i].attempt == entry.task.attempt()
                {
                    self.set_status(i, PhaseStatus::InProcess);
                    self.phases[i].sent = Some(*at);
                }
                Ok(())
            }
            Record::Done { phase, task, .. } => {
                let i = index(phase)?;
                let time = self.phases[i].time.unwrap_or(self.time);
                let p = &mut self.phases[i];
                p.time = Some(time);
                p.started = task.started;
                p.ended = task.ended;
                p.result = task.result;
                p.msg.clone_from(&task.msg);
                p.attempt = p.attempt.max(task.attempt());
                if matches!(task.result, Some(TaskResult::Complete | TaskResult::Warn)) {
                    p.meta = Some(task.meta.clone());
                    p.reason = None;
                    self.set_status(i, PhaseStatus::Completed);
                } else if self.phases[i].status == PhaseStatus::Todo {
                    self.set_status(i, PhaseStatus::InProcess);
                }
                Ok(())
            }
            Record::Fail { phase, reason, .. } => {
                let i = index(phase)?;
                self.phases[i].reason = Some(reason.clone());
                self.set_status(i, PhaseStatus::Failed);
                Ok(())
            }
            Record::Skip { phase, reason, .. } => {
                let i = index(phase)?;
                self.phases[i].reason = Some(reason.clone());
                self.set_status(i, PhaseStatus::Skipped);
                Ok(())
            }
        }
    }
}

/// Where a done task belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The run (it may not exist yet: the task starts it).
    pub key: RunKey,
    /// The phase index in the workflow.
    pub phase: usize,
}

/// Records decided for runs, in order: to be written to each run's journal.
pub type Decided = Vec<(RunKey, Record)>;

/// The state of every run in memory, and the decisions.
#[derive(Debug, Default)]
pub struct Engine {
    workflows: BTreeMap<String, Arc<Workflow>>,
    runs: HashMap<RunKey, Run>,
    failed_topic: Option<String>,
    /// Runs changed since [`Engine::take_changed`].
    changed: HashSet<RunKey>,
    /// Workflows whose file is gone: their runs go on, no new run starts.
    retired: HashSet<String>,
}

impl Engine {
    /// An engine for `workflows`; tasks of phases that fail for good are copied to `failed_topic`.
    pub fn new(
        workflows: impl IntoIterator<Item = Arc<Workflow>>,
        failed_topic: Option<String>,
    ) -> Self {
        Engine {
            workflows: workflows
                .into_iter()
                .map(|w| (w.name().to_owned(), w))
                .collect(),
            runs: HashMap::new(),
            failed_topic,
            changed: HashSet::new(),
            retired: HashSet::new(),
        }
    }

    /// The workflows.
    pub fn workflows(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.workflows.values()
    }

    /// The workflow called `name`.
    pub fn workflow(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.workflows.get(name)
    }

    /// Adds or replaces a workflow. Runs of it in memory are dropped: restore them from their journal
    /// to follow the new version.
    pub fn set_workflow(&mut self, workflow: Arc<Workflow>) -> Vec<RunKey> {
        let name = workflow.name().to_owned();
        self.retired.remove(&name);
        self.workflows.insert(name.clone(), workflow);
        self.drop_runs_of(&name)
    }

    /// Retires a workflow whose file is gone: no new run starts from it, while its runs already
    /// started go on (until the app restarts without it). [`Engine::set_workflow`] brings it back.
    pub fn retire_workflow(&mut self, name: &str) {
        if self.workflows.contains_key(name) {
            self.retired.insert(name.to_owned());
        }
    }

    fn drop_runs_of(&mut self, name: &str) -> Vec<RunKey> {
        let keys: Vec<RunKey> = self
            .runs
            .keys()
            .filter(|k| k.workflow == name)
            .cloned()
            .collect();
        for k in &keys {
            self.runs.remove(k);
        }
        keys
    }

    /// The run `key`, when in memory.
    pub fn run(&self, key: &RunKey) -> Option<&Run> {
        self.runs.get(key)
    }

    /// The runs in memory.
    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.values()
    }

    /// Rebuilds a run from its journal. Records naming phases the workflow no longer has are skipped
    /// and reported; an error when the records do not begin with `start` or the workflow is not loaded.
    pub fn restore(&mut self, records: &[Record]) -> Result<(RunKey, Vec<String>), String> {
        let Some(first @ Record::Start { workflow, .. }) = records.first() else {
            return Err("the journal does not begin with a start record".to_owned());
        };
        let w = self
            .workflows
            .get(workflow)
            .ok_or_else(|| format!("workflow {workflow:?} is not loaded"))?
            .clone();
        let mut run = Run::new(w, first).ok_or("not a start record")?;
        let mut problems = Vec::new();
        for r in &records[1..] {
            if let Err(e) = run.apply(r) {
                problems.push(e);
            }
        }
        let key = run.key.clone();
        self.runs.insert(key.clone(), run);
        Ok((key, problems))
    }

    /// Forgets a run (finished, and kept only in its journal).
    pub fn evict(&mut self, key: &RunKey) {
        self.runs.remove(key);
    }

    /// The runs changed since the last call.
    pub fn take_changed(&mut self) -> Vec<RunKey> {
        self.changed.drain().collect()
    }

    /// Every outbox entry of every run in memory, due or not.
    pub fn outbox(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.runs.values().flat_map(|r| r.outbox.values())
    }

    /// Where `done` belongs: by its `workflow`, `phase` and `run` meta; a task without `workflow` meta
    /// belongs to every root phase of its type and job (a root sent by hand starts a run, whose id is
    /// the task's id). `Err` says why it is not a workflow's.
    pub fn route(&self, done: &Task) -> Result<Vec<Target>, String> {
        let run_of = |done: &Task| {
            done.meta
                .get(keys::RUN)
                .filter(|r| !r.is_empty())
                .unwrap_or(&done.id)
                .to_owned()
        };
        if let Some(name) = done.meta.get(keys::WORKFLOW) {
            let w = self
                .workflows
                .get(name)
                .ok_or_else(|| format!("workflow {name:?} is not loaded"))?;
            let phase = match done.meta.get(keys::PHASE) {
                Some(p) => w
                    .index_of(p)
                    .ok_or_else(|| format!("workflow {name:?} has no phase {p:?}"))?,
                None => w.find_task(&done.kind, &done.job).next().ok_or_else(|| {
                    format!("workflow {name:?} has no phase for {}", done.kind_job())
                })?,
            };
            return Ok(vec![Target {
                key: RunKey {
                    workflow: name.to_owned(),
                    run: run_of(done),
                },
                phase,
            }]);
        }
        let targets: Vec<Target> = self
            .workflows
            .values()
            .filter(|w| !self.retired.contains(w.name()))
            .flat_map(|w| {
                w.find_task(&done.kind, &done.job)
                    .filter(|i| w.phase(*i).is_root())
                    .map(|phase| Target {
                        key: RunKey {
                            workflow: w.name().to_owned(),
                            run: run_of(done),
                        },
                        phase,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if targets.is_empty() {
            return Err(format!(
                "no workflow meta, and no workflow has a root phase for {}",
                done.kind_job()
            ));
        }
        Ok(targets)
    }

    /// Decides what a done task of `target` means, applies it, and returns the records.
    pub fn on_done(&mut self, target: &Target, done: &Task, now: DateTime<Utc>) -> Decided {
        let mut out = Decided::new();
        let Some(w) = self.workflows.get(&target.key.workflow).cloned() else {
            return out;
        };
        if !self.runs.contains_key(&target.key) {
            if self.retired.contains(&target.key.workflow) {
                tracing::warn!(run = %target.key, "the workflow's file is gone: a task of a run it does not know starts nothing");
                return out;
            }
            let (scheduled, time) = adopted_times(&w, target.phase, done, now);
            self.emit(
                &mut out,
                &target.key,
                Record::Start {
                    at: now,
                    workflow: target.key.workflow.clone(),
                    run: target.key.run.clone(),
                    scheduled,
                    time,
                    via: format!("task {}", done.id),
                },
            );
        }
        let Some(run) = self.runs.get(&target.key) else {
            return out;
        };
        let p = &run.phases[target.phase];
        let (status, attempt) = (p.status, p.attempt);
        let name = w.phase(target.phase).name.clone();
        if done.attempt() < attempt && status.active() {
            tracing::debug!(run = %target.key, phase = %name, attempt = done.attempt(), "done task of an earlier attempt ignored");
            return out;
        }
        match done.result {
            None => {}
            Some(TaskResult::Complete | TaskResult::Warn) if status == PhaseStatus::Completed => {
                // A duplicate: children already decided stay as they are; any not yet decided
                // (a journal write cut short) are decided now.
                self.start_ready_children(&mut out, &target.key, target.phase, now);
            }
            Some(TaskResult::Complete | TaskResult::Warn) => {
                self.emit(&mut out, &target.key, done_record(&name, done, now));
                self.start_ready_children(&mut out, &target.key, target.phase, now);
            }
            Some(_) if matches!(status, PhaseStatus::Failed | PhaseStatus::Completed) => {}
            Some(TaskResult::Alert) => {
                self.emit(&mut out, &target.key, done_record(&name, done, now));
                let reason = format!("alert: {}", done.msg);
                self.fail(&mut out, &target.key, &name, done, &reason, now);
            }
            Some(TaskResult::Error) => {
                self.emit(&mut out, &target.key, done_record(&name, done, now));
                self.retry_or_fail(&mut out, &target.key, target.phase, done, now);
            }
        }
        out
    }

    /// Starts root phase `phase` of `workflow` for the cron tick `tick` (once: a tick already handled
    /// decides nothing).
    pub fn on_tick(
        &mut self,
        workflow: &str,
        phase: usize,
        tick: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Decided {
        let mut out = Decided::new();
        let Some(w) = self.workflows.get(workflow).cloned() else {
            return out;
        };
        if self.retired.contains(workflow) {
            return out;
        }
        let key = self.tick_key(&w, tick);
        if !self.runs.contains_key(&key) {
            let start = Record::Start {
                at: now,
                workflow: key.workflow.clone(),
                run: key.run.clone(),
                scheduled: tick,
                time: tick,
                via: format!("cron {}", w.phase(phase).name),
            };
            self.emit(&mut out, &key, start);
        }
        if self
            .runs
            .get(&key)
            .is_some_and(|r| r.phases[phase].status == PhaseStatus::Todo)
        {
            self.start_phase(&mut out, &key, phase, now);
        }
        out
    }

    /// The run a cron tick of `workflow` starts.
    pub fn tick_key(&self, workflow: &Workflow, tick: DateTime<Utc>) -> RunKey {
        RunKey {
            workflow: workflow.name().to_owned(),
            run: workflow.tick_run_id(tick),
        }
    }

    /// Records that outbox entry `n` of `key` is on the bus.
    pub fn sent(&mut self, key: &RunKey, n: u32, now: DateTime<Utc>) -> Decided {
        let mut out = Decided::new();
        if self.runs.contains_key(key) {
            self.emit(&mut out, key, Record::Sent { at: now, n });
        }
        out
    }

    fn emit(&mut self, out: &mut Decided, key: &RunKey, record: Record) {
        match self.runs.get_mut(key) {
            Some(run) => {
                if let Err(e) = run.apply(&record) {
                    tracing::warn!(run = %key, "{e}");
                }
            }
            None => {
                let Some(w) = self.workflows.get(&key.workflow).cloned() else {
                    return;
                };
                let Some(run) = Run::new(w, &record) else {
                    return;
                };
                self.runs.insert(key.clone(), run);
            }
        }
        self.changed.insert(key.clone());
        out.push((key.clone(), record));
    }

    fn start_ready_children(
        &mut self,
        out: &mut Decided,
        key: &RunKey,
        phase: usize,
        now: DateTime<Utc>,
    ) {
        let Some(run) = self.runs.get(key) else {
            return;
        };
        let w = run.workflow.clone();
        for &c in &w.phase(phase).children {
            let Some(run) = self.runs.get(key) else {
                return;
            };
            let ready = run.phases[c].status == PhaseStatus::Todo
                && w.phase(c)
                    .parents
                    .iter()
                    .all(|p| run.phases[*p].status == PhaseStatus::Completed);
            if ready {
                self.start_phase(out, key, c, now);
            }
        }
    }

    /// Decides phase `index`'s task: skipped when a `require` key is missing, failed when its
    /// templates cannot be rendered, queued otherwise.
    fn start_phase(&mut self, out: &mut Decided, key: &RunKey, index: usize, now: DateTime<Utc>) {
        let Some(run) = self.runs.get(key) else {
            return;
        };
        let w = run.workflow.clone();
        let phase = w.phase(index);
        let parents: Vec<(&str, &Meta)> = phase
            .parents
            .iter()
            .filter_map(|p| {
                run.phases[*p]
                    .meta
                    .as_ref()
                    .map(|m| (w.phase(*p).name.as_str(), m))
            })
            .collect();
        let input = w.template_meta(index, &run.info(), &parents);
        if let Some(missing) = w.missing_requirement(index, &input) {
            let reason = format!("require: the parents' meta has no {missing}");
            self.skip(out, key, index, reason, now);
            return;
        }
        let base = phase
            .parents
            .first()
            .and_then(|p| run.phases[*p].time)
            .unwrap_or(run.time);
        let time = base + phase.offset;
        let built = w.build_task(index, &run.info(), time, &input);
        let n = run.next_n;
        let record = match built {
            Ok(task) => Record::Queue {
                at: now,
                n,
                phase: phase.name.clone(),
                topic: phase.topic.clone(),
                task,
                due: None,
                time: Some(time),
                notice: false,
            },
            Err(e) => Record::Fail {
                at: now,
                phase: phase.name.clone(),
                reason: format!("cannot make its task: {e}"),
            },
        };
        self.emit(out, key, record);
    }

    /// Skips `index` and every descendant not yet started (a child of a skipped phase can never have
    /// all its parents completed).
    fn skip(
        &mut self,
        out: &mut Decided,
        key: &RunKey,
        index: usize,
        reason: String,
        now: DateTime<Utc>,
    ) {
        let Some(run) = self.runs.get(key) else {
            return;
        };
        let w = run.workflow.clone();
        let mut queue = VecDeque::from([(index, reason)]);
        while let Some((i, reason)) = queue.pop_front() {
            let Some(run) = self.runs.get(key) else {
                return;
            };
            if run.phases[i].status != PhaseStatus::Todo {
                continue;
            }
            let name = w.phase(i).name.clone();
            for &c in &w.phase(i).children {
                queue.push_back((c, format!("parent {name} was skipped")));
            }
            self.emit(
                out,
                key,
                Record::Skip {
                    at: now,
                    phase: name,
                    reason,
                },
            );
        }
    }

    fn retry_or_fail(
        &mut self,
        out: &mut Decided,
        key: &RunKey,
        index: usize,
        done: &Task,
        now: DateTime<Utc>,
    ) {
        let Some(run) = self.runs.get(key) else {
            return;
        };
        let phase = run.workflow.phase(index);
        let name = phase.name.clone();
        let rules = RetryRules {
            rules: vec![RetryRule {
                kind: "*".to_owned(),
                job: None,
                policy: phase.retry.clone(),
            }],
            failed_topic: self.failed_topic.clone().unwrap_or_default(),
        };
        let retries = phase.retry.retries;
        match rules.decide(done, now) {
            Decision::Retry { task, topic, due } => {
                let record = Record::Queue {
                    at: now,
                    n: run.next_n,
                    phase: name,
                    topic,
                    task,
                    due: Some(due),
                    time: None,
                    notice: false,
                };
                self.emit(out, key, record);
            }
            Decision::Fail { task, reason, .. } => {
                let reason = if retries == 0 {
                    format!("{} (the phase has no retry)", done.msg)
                } else {
                    format!("{reason}: {}", done.msg)
                };
                self.fail(out, key, &name, &task, &reason, now);
            }
            Decision::Ignore(reason) => self.fail(out, key, &name, done, &reason, now),
        }
    }

    fn fail(
        &mut self,
        out: &mut Decided,
        key: &RunKey,
        phase: &str,
        task: &Task,
        reason: &str,
        now: DateTime<Utc>,
    ) {
        tracing::warn!(run = %key, %phase, %reason, "phase failed for good; its descendants will not start");
        self.emit(
            out,
            key,
            Record::Fail {
                at: now,
                phase: phase.to_owned(),
                reason: reason.to_owned(),
            },
        );
        let Some(topic) = self.failed_topic.clone() else {
            return;
        };
        let Some(run) = self.runs.get(key) else {
            return;
        };
        let mut notice = task.clone();
        notice.meta.set(crate::retry::FAILED_REASON, reason);
        let record = Record::Queue {
            at: now,
            n: run.next_n,
            phase: phase.to_owned(),
            topic,
            task: notice,
            due: None,
            time: None,
            notice: true,
        };
        self.emit(out, key, record);
    }
}

fn done_record(phase: &str, done: &Task, now: DateTime<Utc>) -> Record {
    Record::Done {
        at: now,
        phase: phase.to_owned(),
        task: done.clone(),
    }
}

/// The scheduled time and the phase time of a run started by a task from outside: `scheduled` (or
/// flowlord's `cron`) meta, else the time in its info (`?day=`, `?hour=` …), else when it was made.
fn adopted_times(
    w: &Workflow,
    phase: usize,
    done: &Task,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let from_meta = [keys::SCHEDULED, "cron"]
        .iter()
        .find_map(|k| done.meta.get(k))
        .and_then(|v| taskbus_bus::task::time::parse(v).ok().flatten());
    if let Some(t) = from_meta {
        return (t, t + w.phase(phase).offset);
    }
    if let Some(t) = info_time(&done.info) {
        return (t, t);
    }
    let t = done.created.unwrap_or(now);
    (t, t)
}

/// The time an info string names in its query, as flowlord reads it: `day` or `date`
/// (`2006-01-02`), `hour` (`2006-01-02T15`), `time` (RFC 3339).
pub fn info_time(info: &str) -> Option<DateTime<Utc>> {
    let query = info.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    let meta: Meta = query.parse().ok()?;
    if let Some(t) = meta.get("time") {
        if let Ok(Some(t)) = taskbus_bus::task::time::parse(t) {
            return Some(t);
        }
    }
    if let Some(h) = meta.get("hour") {
        if let Ok(t) =
            chrono::NaiveDateTime::parse_from_str(&format!("{h}:00:00"), "%Y-%m-%dT%H:%M:%S")
        {
            return Some(t.and_utc());
        }
    }
    for key in ["day", "date"] {
        if let Some(d) = meta.get(key) {
            if let Ok(d) = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d") {
                return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
            }
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::workflow::rfc3339;
    use super::*;

    #[test]
    fn info_times_as_flowlord_reads_them() {
        let t = |s: &str| info_time(s).map(rfc3339);
        assert_eq!(
            t("s3://b/p?day=2024-01-02").as_deref(),
            Some("2024-01-02T00:00:00Z")
        );
        assert_eq!(
            t("?hour=2024-01-02T05").as_deref(),
            Some("2024-01-02T05:00:00Z")
        );
        assert_eq!(
            t("?time=2024-01-02T05:06:07Z").as_deref(),
            Some("2024-01-02T05:06:07Z")
        );
        assert_eq!(t("no-query"), None);
    }

    #[test]
    fn records_round_trip_as_json_lines() {
        let r = Record::Queue {
            at: "2024-01-02T00:00:00Z".parse().unwrap(),
            n: 3,
            phase: "b".into(),
            topic: "b".into(),
            task: Task::with_id("b", "x", "id"),
            due: None,
            time: None,
            notice: false,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.starts_with("{\"ev\":\"queue\""), "{line}");
        assert!(!line.contains("notice"), "{line}");
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }
}
