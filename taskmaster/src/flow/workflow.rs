//! A checked workflow: phases, the edges between them (a DAG, checked for cycles when built), and
//! how each phase's task is made. Built by [`config`](super::config); read by the engine.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use taskbus_bus::task::meta::keys;
use taskbus_bus::{Meta, Task};

use crate::cron::{CatchUp, Schedule};
use crate::retry::Policy;
use crate::template::{Template, Vars};

/// The namespace of the deterministic ids of workflow tasks and runs (UUID v5).
pub const FLOW_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x2c6f_81a4_93d0_4b7e_8f15_5a0e_c4d2_7b39);

/// The meta keys the flow app sets on every task it sends, and that every template can read.
pub const FRAMEWORK_KEYS: [&str; 4] = [keys::WORKFLOW, keys::RUN, keys::PHASE, keys::SCHEDULED];

/// What starts a phase.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Its parents completing (in the same run).
    Parents,
    /// A cron schedule: each tick starts (or joins) the run of that scheduled time.
    Cron(CronTrigger),
    /// A task sent by hand (`taskbus flow start`, or any task of the phase's type and job without
    /// workflow meta).
    Manual,
}

/// A root phase's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct CronTrigger {
    /// When it fires.
    pub schedule: Schedule,
    /// What to do with ticks missed while the app was down.
    pub catch_up: CatchUp,
    /// Missed ticks older than this are skipped.
    pub catch_up_window: Duration,
}

/// One phase of a workflow: a kind of task, and when it starts.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Unique in its workflow; the `phase` meta key of its tasks.
    pub name: String,
    /// The task's `type`.
    pub kind: String,
    /// The task's `job` (may be empty).
    pub job: String,
    /// Where the task is sent (default: the type).
    pub topic: String,
    /// Indexes of the phases that must complete first, in the order written.
    pub parents: Vec<usize>,
    /// Indexes of the phases that wait for this one.
    pub children: Vec<usize>,
    /// What starts it.
    pub trigger: Trigger,
    /// The task's `info`.
    pub template: Template,
    /// Meta set on the task, each value a template that may read the parents' meta.
    pub meta: Vec<(String, Template)>,
    /// Meta keys that the parents' meta must have (non-empty) for this phase to start; otherwise it is
    /// skipped, with its descendants.
    pub require: Vec<String>,
    /// How a failed task of this phase is retried (`retries = 0`: never).
    pub retry: Policy,
    /// Added to the phase's base time (the run's scheduled time for a root, the first parent's time
    /// otherwise) before rendering its templates.
    pub offset: chrono::Duration,
    /// The zone its templates (and cron schedule) are read in.
    pub timezone: Tz,
}

impl Phase {
    /// `type:job`, or `type` without a job.
    pub fn task_name(&self) -> String {
        if self.job.is_empty() {
            self.kind.clone()
        } else {
            format!("{}:{}", self.kind, self.job)
        }
    }

    /// True for a phase without parents.
    pub fn is_root(&self) -> bool {
        self.parents.is_empty()
    }
}

/// A workflow that loaded and passed every check: phase names unique, parents known, no cycle.
#[derive(Debug, Clone)]
pub struct Workflow {
    name: String,
    phases: Vec<Phase>,
    index: HashMap<String, usize>,
    order: Vec<usize>,
}

/// Why a set of phases is not a DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The phase names on the cycle, each a parent of the next; the last is a parent of the first.
    pub phases: Vec<String>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = self.phases.clone();
        if let Some(first) = self.phases.first() {
            names.push(first.clone());
        }
        write!(f, "{}", names.join(" -> "))
    }
}

impl Workflow {
    /// Links `phases` (whose `parents` are set; `children` are computed) and checks there is no cycle.
    pub fn new(name: impl Into<String>, mut phases: Vec<Phase>) -> Result<Workflow, Cycle> {
        for phase in &mut phases {
            phase.children.clear();
        }
        for i in 0..phases.len() {
            for p in phases[i].parents.clone() {
                phases[p].children.push(i);
            }
        }
        let order = topological_order(&phases)?;
        let index = phases
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        Ok(Workflow {
            name: name.into(),
            phases,
            index,
            order,
        })
    }

    /// The workflow's name: its file's path relative to the workflow directory (the `workflow` meta key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The phases, in the order written.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The phase at `index`.
    pub fn phase(&self, index: usize) -> &Phase {
        &self.phases[index]
    }

    /// The index of the phase called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Phase indexes, every parent before its children.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The phases whose task is `kind` with `job`, in the order written.
    pub fn find_task(&self, kind: &str, job: &str) -> impl Iterator<Item = usize> + '_ {
        let (kind, job) = (kind.to_owned(), job.to_owned());
        self.phases
            .iter()
            .enumerate()
            .filter(move |(_, p)| p.kind == kind && p.job == job)
            .map(|(i, _)| i)
    }

    /// The id of the run a cron tick starts: one run per workflow and scheduled time, so root phases
    /// firing at the same tick share it.
    pub fn tick_run_id(&self, tick: DateTime<Utc>) -> String {
        let name = format!("flow-run/{}@{}", self.name, rfc3339(tick));
        uuid::Uuid::new_v5(&FLOW_NAMESPACE, name.as_bytes()).to_string()
    }

    /// The id of the task of phase `index` in `run`: the same every time it is computed, so a task
    /// sent again after a restart is recognisably the same task.
    pub fn task_id(&self, run: &str, index: usize) -> String {
        let name = format!("flow/{}/{}/{}", self.name, run, self.phases[index].name);
        uuid::Uuid::new_v5(&FLOW_NAMESPACE, name.as_bytes()).to_string()
    }

    /// The meta a phase's templates read: the parents' done meta merged (for a key set by several
    /// parents, the first parent in `depends_on` order wins; `PARENT.key` reads one parent's value),
    /// then the framework keys of the run.
    pub fn template_meta(
        &self,
        index: usize,
        run: &RunInfo<'_>,
        parents: &[(&str, &Meta)],
    ) -> Meta {
        let mut meta = Meta::new();
        for (_, m) in parents {
            for (k, v) in m.iter() {
                if meta.get(k).is_none() {
                    meta.set(k, v);
                }
            }
        }
        for (name, m) in parents {
            for (k, v) in m.iter() {
                let qualified = format!("{name}.{k}");
                if meta.get(&qualified).is_none() {
                    meta.set(qualified, v);
                }
            }
        }
        self.framework_meta(index, run, &mut meta);
        meta
    }

    fn framework_meta(&self, index: usize, run: &RunInfo<'_>, meta: &mut Meta) {
        meta.set(keys::WORKFLOW, &self.name);
        meta.set(keys::RUN, run.run);
        meta.set(keys::PHASE, &self.phases[index].name);
        meta.set(keys::SCHEDULED, rfc3339(run.scheduled));
    }

    /// The first `require` key of phase `index` that `meta` lacks (or has empty).
    pub fn missing_requirement(&self, index: usize, meta: &Meta) -> Option<&str> {
        self.phases[index]
            .require
            .iter()
            .find(|k| meta.get(k).map_or(true, str::is_empty))
            .map(String::as_str)
    }

    /// The task of phase `index` in a run: its deterministic id, its meta (framework keys, then the
    /// phase's meta rendered), and its info rendered at `time` (in the phase's zone) with `input`
    /// and the phase's own meta.
    pub fn build_task(
        &self,
        index: usize,
        run: &RunInfo<'_>,
        time: DateTime<Utc>,
        input: &Meta,
    ) -> Result<Task, String> {
        let phase = &self.phases[index];
        let local = time.with_timezone(&phase.timezone);
        let mut meta = Meta::new();
        self.framework_meta(index, run, &mut meta);
        let mut readable = input.clone();
        for (key, template) in &phase.meta {
            let value = template
                .render(&Vars::at(local).meta(input))
                .map_err(|e| format!("meta {key}: {e}"))?;
            readable.set(key.clone(), &value);
            meta.set(key.clone(), value);
        }
        let info = phase
            .template
            .render(&Vars::at(local).meta(&readable))
            .map_err(|e| format!("template: {e}"))?;
        let mut task =
            Task::with_id(&phase.kind, info, self.task_id(run.run, index)).job(&phase.job);
        task.meta = meta;
        Ok(task)
    }
}

/// What identifies a run to the task builder.
#[derive(Debug, Clone, Copy)]
pub struct RunInfo<'a> {
    /// The run id.
    pub run: &'a str,
    /// The run's scheduled time.
    pub scheduled: DateTime<Utc>,
}

/// RFC 3339 in UTC with whole seconds when there are no fractions.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Kahn's algorithm; on a cycle, walks parents among the phases left over to name one cycle.
fn topological_order(phases: &[Phase]) -> Result<Vec<usize>, Cycle> {
    let mut waiting: Vec<usize> = phases.iter().map(|p| p.parents.len()).collect();
    let mut ready: Vec<usize> = (0..phases.len()).filter(|i| waiting[*i] == 0).collect();
    ready.reverse();
    let mut order = Vec::with_capacity(phases.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in phases[i].children.iter().rev() {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() == phases.len() {
        return Ok(order);
    }
    Err(find_cycle(phases, &waiting))
}

/// Every phase left with `waiting > 0` has a parent also left over, so walking parents from any of
/// them must come back to a phase already seen: the walk from there on is a cycle.
fn find_cycle(phases: &[Phase], waiting: &[usize]) -> Cycle {
    let start = waiting.iter().position(|w| *w > 0).unwrap_or(0);
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut at = start;
    loop {
        if let Some(&pos) = seen.get(&at) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .map(|i: &usize| phases[*i].name.clone())
                .collect();
            cycle.reverse();
            return Cycle { phases: cycle };
        }
        seen.insert(at, path.len());
        path.push(at);
        match phases[at].parents.iter().find(|p| waiting[**p] > 0) {
            Some(&p) => at = p,
            None => {
                return Cycle {
                    phases: vec![phases[at].name.clone()],
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn phase(name: &str, parents: &[usize]) -> Phase {
        Phase {
            name: name.to_owned(),
            kind: name.to_owned(),
            job: String::new(),
            topic: name.to_owned(),
            parents: parents.to_vec(),
            children: Vec::new(),
            trigger: if parents.is_empty() {
                Trigger::Manual
            } else {
                Trigger::Parents
            },
            template: Template::parse("").unwrap(),
            meta: Vec::new(),
            require: Vec::new(),
            retry: Policy {
                retries: 0,
                ..Policy::default()
            },
            offset: chrono::Duration::zero(),
            timezone: chrono_tz::UTC,
        }
    }

    #[test]
    fn a_diamond_is_ordered_parents_first() {
        let w = Workflow::new(
            "d",
            vec![
                phase("a", &[]),
                phase("b", &[0]),
                phase("c", &[0]),
                phase("d", &[1, 2]),
            ],
        )
        .unwrap();
        assert_eq!(w.order(), [0, 1, 2, 3]);
        assert_eq!(w.phase(0).children, [1, 2]);
        assert_eq!(w.index_of("d"), Some(3));
    }

    #[test]
    fn cycles_are_named_in_order() {
        // a -> b -> c -> a, plus a root r feeding a.
        let err = Workflow::new(
            "c",
            vec![
                phase("r", &[]),
                phase("a", &[0, 3]),
                phase("b", &[1]),
                phase("c", &[2]),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.phases.len(), 3, "{text}");
        for pair in ["a -> b", "b -> c", "c -> a"] {
            assert!(
                text.contains(pair) || format!("{text} -> x").contains(pair),
                "{text}"
            );
        }
        let err = Workflow::new("s", vec![phase("a", &[0])]).unwrap_err();
        assert_eq!(err.to_string(), "a -> a");
    }

    #[test]
    fn a_long_chain_does_not_recurse() {
        let phases: Vec<Phase> = (0..50_000)
            .map(|i| {
                let parents: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
                phase(&format!("p{i}"), &parents)
            })
            .collect();
        let w = Workflow::new("long", phases).unwrap();
        assert_eq!(w.order().len(), 50_000);
    }
}
