//! The flow engine without a bus: chains, fan-out, fan-in, diamonds, `require`, retries, failure
//! propagation, cycles rejected, runs started by hand, and a run rebuilt from its records.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use taskbus_bus::{Task, TaskResult};
use taskbus_taskmaster::config::ConfigFile;
use taskbus_taskmaster::flow::{config, Engine, PhaseStatus, Record, RunKey, RunOutcome};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// An engine, a clock, and the records it decided (as the journal would hold them).
struct Sim {
    engine: Engine,
    now: DateTime<Utc>,
    records: Vec<(RunKey, Record)>,
}

impl Sim {
    fn new(toml: &str) -> Sim {
        let parsed = config::parse(&ConfigFile::new("w.toml", toml), "w.toml").unwrap();
        Sim {
            engine: Engine::new([Arc::new(parsed.workflow)], Some("failed".into())),
            now: utc("2024-01-02T00:00:05Z"),
            records: Vec::new(),
        }
    }

    fn phase_index(&self, name: &str) -> usize {
        self.engine
            .workflow("w.toml")
            .unwrap()
            .index_of(name)
            .unwrap()
    }

    /// A cron tick of `phase`; returns the run.
    fn tick(&mut self, phase: &str, tick: &str) -> RunKey {
        let i = self.phase_index(phase);
        let out = self.engine.on_tick("w.toml", i, utc(tick), self.now);
        let key = self
            .engine
            .tick_key(self.engine.workflow("w.toml").unwrap(), utc(tick));
        self.records.extend(out);
        key
    }

    /// Sends what is due: the phase tasks (sorted by phase) and the failure notices.
    fn send(&mut self) -> (Vec<Task>, Vec<Task>) {
        let due: Vec<_> = self
            .engine
            .outbox()
            .filter(|e| e.due.map_or(true, |d| d <= self.now))
            .cloned()
            .collect();
        let (mut tasks, mut notices) = (Vec::new(), Vec::new());
        for e in due {
            let out = self.engine.sent(&e.key, e.n, self.now);
            self.records.extend(out);
            if e.notice {
                assert_eq!(e.topic, "failed");
                notices.push(e.task);
            } else {
                tasks.push(e.task);
            }
        }
        tasks.sort_by(|a, b| a.meta.get("phase").cmp(&b.meta.get("phase")));
        (tasks, notices)
    }

    fn sent_phases(&mut self) -> Vec<String> {
        self.send()
            .0
            .iter()
            .map(|t| t.meta.get("phase").unwrap().to_owned())
            .collect()
    }

    /// A worker's done task for `task`.
    fn finish(&mut self, task: &Task, result: TaskResult, meta: &[(&str, &str)]) {
        let mut done = task.clone();
        for (k, v) in meta {
            done.meta.set(*k, v);
        }
        done.started = Some(self.now);
        done.end(result, format!("{result} by test"));
        done.ended = Some(self.now);
        self.deliver(&done);
    }

    fn deliver(&mut self, done: &Task) {
        for target in self.engine.route(done).unwrap() {
            let out = self.engine.on_done(&target, done, self.now);
            self.records.extend(out);
        }
    }

    fn status(&self, key: &RunKey, phase: &str) -> PhaseStatus {
        self.engine.run(key).unwrap().phases[self.phase_index(phase)].status
    }

    fn outcome(&self, key: &RunKey) -> RunOutcome {
        self.engine.run(key).unwrap().outcome()
    }

    fn task_of(tasks: &[Task], phase: &str) -> Task {
        tasks
            .iter()
            .find(|t| t.meta.get("phase") == Some(phase))
            .unwrap_or_else(|| panic!("no task of {phase} in {tasks:?}"))
            .clone()
    }
}

const CHAIN: &str = r#"
[[phase]]
task = "a"
rule = { cron = "0 * * * *", offset = "-1h" }
template = "?hour={yyyy}-{mm}-{dd}T{hh}"
[[phase]]
task = "b"
depends_on = "a"
template = "?hour={yyyy}-{mm}-{dd}T{hh}&rows={meta:rows}"
[[phase]]
task = "c:load"
depends_on = "b"
template = "{meta:run}"
"#;

#[test]
fn a_chain_runs_phase_after_phase_with_the_run_and_time_passed_down() {
    let mut s = Sim::new(CHAIN);
    let key = s.tick("a", "2024-01-02T10:00:00Z");
    let (tasks, _) = s.send();
    assert_eq!(tasks.len(), 1);
    let a = &tasks[0];
    assert_eq!(a.info, "?hour=2024-01-02T09", "the offset applies");
    assert_eq!(a.meta.get("run"), Some(key.run.as_str()));
    assert_eq!(a.meta.get("workflow"), Some("w.toml"));
    assert_eq!(a.meta.get("scheduled"), Some("2024-01-02T10:00:00Z"));
    assert_eq!(s.status(&key, "a"), PhaseStatus::InProcess);
    assert_eq!(s.status(&key, "b"), PhaseStatus::Todo);

    s.finish(a, TaskResult::Complete, &[("rows", "7")]);
    let (tasks, _) = s.send();
    let b = Sim::task_of(&tasks, "b");
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        b.info, "?hour=2024-01-02T09&rows=7",
        "the parent's time and meta"
    );
    assert_eq!(b.meta.get("scheduled"), Some("2024-01-02T10:00:00Z"));
    assert_ne!(b.id, a.id);

    s.finish(&b, TaskResult::Complete, &[]);
    let (tasks, _) = s.send();
    let c = Sim::task_of(&tasks, "c:load");
    assert_eq!((c.kind.as_str(), c.job.as_str()), ("c", "load"));
    assert_eq!(c.info, key.run);
    assert_eq!(s.outcome(&key), RunOutcome::Running);
    s.finish(&c, TaskResult::Complete, &[]);
    assert!(s.send().0.is_empty());
    assert_eq!(s.outcome(&key), RunOutcome::Completed);
    assert!(s.engine.run(&key).unwrap().is_finished());

    // The same tick again (a restart that re-read an old tick) starts nothing.
    s.tick("a", "2024-01-02T10:00:00Z");
    assert!(s.send().0.is_empty());
    // The next tick is another run, with other ids.
    let next = s.tick("a", "2024-01-02T11:00:00Z");
    assert_ne!(next, key);
    let (tasks, _) = s.send();
    assert_ne!(tasks[0].id, a.id);
}

#[test]
fn fan_out_starts_every_child() {
    let mut s = Sim::new(
        r#"
[[phase]]
task = "a"
rule = { manual = true }
[[phase]]
task = "b"
depends_on = "a"
[[phase]]
task = "c"
depends_on = ["a"]
[[phase]]
task = "d"
depends_on = "a"
"#,
    );
    // Started by hand: a task of the root's type without workflow meta.
    let root = Task::new("a", "by hand");
    s.finish(&root, TaskResult::Complete, &[]);
    let key = RunKey {
        workflow: "w.toml".into(),
        run: root.id.clone(),
    };
    assert_eq!(s.status(&key, "a"), PhaseStatus::Completed);
    let (tasks, _) = s.send();
    assert_eq!(s.sent_phases(), Vec::<String>::new(), "sent once");
    let phases: Vec<&str> = tasks.iter().map(|t| t.meta.get("phase").unwrap()).collect();
    assert_eq!(phases, ["b", "c", "d"]);
    assert!(tasks
        .iter()
        .all(|t| t.meta.get("run") == Some(root.id.as_str())));
    let ids: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
}

#[test]
fn fan_in_waits_for_every_parent_of_the_same_run() {
    let mut s = Sim::new(
        r#"
[[phase]]
task = "a"
rule = { cron = "@hourly" }
[[phase]]
task = "b"
rule = { cron = "@hourly" }
[[phase]]
task = "c"
depends_on = ["a", "b"]
template = "{meta:a.n}+{meta:b.n}={meta:n}"
"#,
    );
    let key = s.tick("a", "2024-01-02T10:00:00Z");
    assert_eq!(
        s.tick("b", "2024-01-02T10:00:00Z"),
        key,
        "roots of one tick share a run"
    );
    let other = s.tick("a", "2024-01-02T11:00:00Z");
    let (tasks, _) = s.send();
    assert_eq!(tasks.len(), 3);
    let (a10, a11) = {
        let mut a: Vec<&Task> = tasks.iter().filter(|t| t.kind == "a").collect();
        a.sort_by_key(|t| t.meta.get("scheduled").map(str::to_owned));
        (a[0].clone(), a[1].clone())
    };
    let b10 = Sim::task_of(&tasks, "b");

    s.finish(&a10, TaskResult::Complete, &[("n", "1")]);
    s.finish(&a11, TaskResult::Complete, &[("n", "9")]);
    assert!(s.send().0.is_empty(), "c waits for b of its own run");
    assert_eq!(s.status(&key, "c"), PhaseStatus::Todo);
    assert_eq!(s.status(&other, "c"), PhaseStatus::Todo);

    s.finish(&b10, TaskResult::Complete, &[("n", "2")]);
    let (tasks, _) = s.send();
    assert_eq!(tasks.len(), 1);
    let c = &tasks[0];
    assert_eq!(c.meta.get("run"), Some(key.run.as_str()));
    assert_eq!(
        c.info, "1+2=1",
        "each parent by name; the first parent wins a shared key"
    );
    // b's done delivered again: c is not started twice.
    s.finish(&b10, TaskResult::Complete, &[("n", "2")]);
    assert!(s.send().0.is_empty());
    assert_eq!(s.status(&other, "c"), PhaseStatus::Todo);
    match s.outcome(&other) {
        RunOutcome::Incomplete { phase, waiting_for } => {
            assert_eq!((phase.as_str(), waiting_for), ("c", vec!["b".to_owned()]));
        }
        o => panic!("{o:?}"),
    }
}

const DIAMOND: &str = r#"
[[phase]]
task = "a"
rule = { cron = "@daily" }
[[phase]]
task = "b"
depends_on = "a"
retry = { retries = 2, delay = "10s", backoff = "linear" }
[[phase]]
task = "c"
depends_on = "a"
[[phase]]
task = "d"
depends_on = ["b", "c"]
[[phase]]
task = "e"
depends_on = "d"
"#;

#[test]
fn a_diamond_joins_once_when_both_branches_complete() {
    let mut s = Sim::new(DIAMOND);
    let key = s.tick("a", "2024-01-02T00:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[]);
    let (tasks, _) = s.send();
    assert_eq!(tasks.len(), 2);
    let (b, c) = (Sim::task_of(&tasks, "b"), Sim::task_of(&tasks, "c"));
    s.finish(&c, TaskResult::Complete, &[]);
    assert!(s.send().0.is_empty(), "d waits for b");
    assert_eq!(s.status(&key, "d"), PhaseStatus::Todo);
    s.finish(&b, TaskResult::Warn, &[]);
    assert_eq!(s.sent_phases(), ["d"], "warn counts as completed");
    assert_eq!(s.status(&key, "d"), PhaseStatus::InProcess);
}

#[test]
fn a_failed_phase_is_retried_by_its_rule_with_backoff() {
    let mut s = Sim::new(DIAMOND);
    let key = s.tick("a", "2024-01-02T00:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[]);
    let (tasks, _) = s.send();
    let b = Sim::task_of(&tasks, "b");
    s.finish(&b, TaskResult::Error, &[]);
    assert_eq!(s.status(&key, "b"), PhaseStatus::Queued);
    assert!(s.send().0.is_empty(), "not before the delay");
    s.now += chrono::Duration::seconds(10);
    let (tasks, _) = s.send();
    let retry = Sim::task_of(&tasks, "b");
    assert_eq!((retry.id.as_str(), retry.attempt()), (b.id.as_str(), 1));
    assert_eq!(retry.meta.get("run"), Some(key.run.as_str()));
    // The first attempt's done task delivered again is stale: no second retry.
    s.finish(&b, TaskResult::Error, &[]);
    assert!(s.send().0.is_empty());
    s.finish(&retry, TaskResult::Error, &[]);
    s.now += chrono::Duration::seconds(19);
    assert!(s.send().0.is_empty(), "linear: 20s before the second retry");
    s.now += chrono::Duration::seconds(1);
    let (tasks, _) = s.send();
    let second = Sim::task_of(&tasks, "b");
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.meta.get_all("retry_history").count(), 2);
    s.finish(&second, TaskResult::Complete, &[]);
    assert_eq!(s.status(&key, "b"), PhaseStatus::Completed);
}

#[test]
fn a_phase_failing_for_good_stops_its_descendants_and_fails_the_run() {
    let mut s = Sim::new(DIAMOND);
    let key = s.tick("a", "2024-01-02T00:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[]);
    let (tasks, _) = s.send();
    let (mut b, c) = (Sim::task_of(&tasks, "b"), Sim::task_of(&tasks, "c"));
    for _ in 0..3 {
        s.finish(&b, TaskResult::Error, &[]);
        s.now += chrono::Duration::minutes(1);
        let (tasks, notices) = s.send();
        if let Some(t) = tasks.first() {
            b = t.clone();
        } else {
            assert_eq!(notices.len(), 1, "a copy goes to the failed topic");
            assert!(notices[0]
                .meta
                .get("failed_reason")
                .unwrap()
                .contains("after 2 retries"));
        }
    }
    assert_eq!(s.status(&key, "b"), PhaseStatus::Failed);
    match s.outcome(&key) {
        RunOutcome::Failed { phase, reason } => {
            assert_eq!(phase, "b");
            assert!(reason.contains("gave up after 2 retries"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    assert!(
        !s.engine.run(&key).unwrap().is_finished(),
        "c is still running"
    );
    s.finish(&c, TaskResult::Complete, &[]);
    assert!(s.send().0.is_empty(), "d never starts");
    assert_eq!(s.status(&key, "d"), PhaseStatus::Todo);
    assert_eq!(s.status(&key, "e"), PhaseStatus::Todo);
    assert!(s.engine.run(&key).unwrap().is_finished());
    assert!(matches!(s.outcome(&key), RunOutcome::Failed { .. }));
    let rows = taskbus_taskmaster::flow::status::rows(s.engine.run(&key).unwrap());
    let d = rows.iter().find(|r| r.phase == "d").unwrap();
    assert_eq!(d.note, "will not start: b failed");
    let e = rows.iter().find(|r| r.phase == "e").unwrap();
    assert_eq!(e.note, "will not start: b failed");
    // A late duplicate of the last error decides nothing.
    s.finish(&b, TaskResult::Error, &[]);
    assert!(s.send().0.is_empty() && s.send().1.is_empty());
}

#[test]
fn alert_fails_at_once_and_a_phase_without_retry_fails_on_the_first_error() {
    let mut s = Sim::new(DIAMOND);
    let key = s.tick("a", "2024-01-02T00:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[]);
    let (tasks, _) = s.send();
    s.finish(&Sim::task_of(&tasks, "b"), TaskResult::Alert, &[]);
    assert_eq!(s.status(&key, "b"), PhaseStatus::Failed);
    s.finish(&Sim::task_of(&tasks, "c"), TaskResult::Error, &[]);
    assert_eq!(s.status(&key, "c"), PhaseStatus::Failed, "c has no retry");
    let (_, notices) = s.send();
    assert_eq!(notices.len(), 2);
    let reason = match s.outcome(&key) {
        RunOutcome::Failed { reason, .. } => reason,
        o => panic!("{o:?}"),
    };
    assert!(reason.starts_with("alert:"), "{reason}");
}

#[test]
fn require_skips_a_child_and_its_descendants_when_the_key_is_missing() {
    let toml = r#"
[[Phase]]
task = "a"
rule = "cron=0 0 * * * *"
[[Phase]]
task = "b"
dependsOn = "a"
rule = "require={meta:file}"
template = "{meta:file}"
[[Phase]]
task = "c"
dependsOn = "b"
[[Phase]]
task = "other"
dependsOn = "a"
"#;
    let mut s = Sim::new(toml);
    let key = s.tick("a", "2024-01-02T10:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[]);
    assert_eq!(s.sent_phases(), ["other"]);
    assert_eq!(s.status(&key, "b"), PhaseStatus::Skipped);
    assert_eq!(s.status(&key, "c"), PhaseStatus::Skipped);
    let rows = taskbus_taskmaster::flow::status::rows(s.engine.run(&key).unwrap());
    assert!(rows[1].note.contains("file"), "{rows:?}");
    assert_eq!(rows[2].note, "parent b was skipped");

    let key = s.tick("a", "2024-01-02T11:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[("file", "s3://x/y.csv")]);
    let (tasks, _) = s.send();
    assert_eq!(Sim::task_of(&tasks, "b").info, "s3://x/y.csv");
    assert_eq!(s.status(&key, "b"), PhaseStatus::InProcess);
}

#[test]
fn cycles_are_rejected_naming_the_phases() {
    let err = config::parse(
        &ConfigFile::new(
            "cycle.toml",
            r#"
[[phase]]
task = "root"
rule = { cron = "@daily" }
[[phase]]
task = "a"
depends_on = ["root", "c"]
[[phase]]
task = "b"
depends_on = "a"
[[phase]]
task = "c"
depends_on = "b"
"#,
        ),
        "cycle.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("cycle.toml:"), "{err}");
    assert!(err.contains("cycle"), "{err}");
    let names = ["a -> b", "b -> c", "c -> a"];
    let cyclic = format!("{err} {err}");
    assert!(
        names.iter().all(|n| cyclic.contains(n)),
        "the cycle's phases in order: {err}"
    );
}

#[test]
fn other_bad_workflows_are_rejected_with_phase_and_reason() {
    let bad = |toml: &str| {
        config::parse(&ConfigFile::new("bad.toml", toml), "bad.toml")
            .unwrap_err()
            .to_string()
    };
    let e = bad("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n[[phase]]\ntask = \"b\"\ndepends_on = \"a\"\ntemplate = \"{meta:x.k}\"\n[[phase]]\nname = \"x\"\ntask = \"b\"\ndepends_on = \"a\"\n");
    assert!(
        e.contains("phase \"b\".template") && e.contains("not a parent"),
        "{e}"
    );
    let e =
        bad("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\ntemplate = \"{meta:file}\"\n");
    assert!(e.contains("cron phase has no parents"), "{e}");
    let e = bad("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n");
    assert!(e.contains("also the name"), "{e}");
    let e = bad("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\" }\n[[phase]]\ntask = \"b\"\ndepends_on = \"a\"\nrule = { cron = \"@daily\" }\n");
    assert!(e.contains("cannot also have a cron"), "{e}");
    let e = bad("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\", colour = 1 }\n");
    assert!(e.contains("colour"), "{e}");
    let e = bad("[[phase]]\ntask = \"a:x\"\nrule = { manual = true }\n[[phase]]\ntask = \"a:y\"\nrule = { manual = true }\n[[phase]]\ntask = \"b\"\ndepends_on = \"a\"\n");
    assert!(e.contains("could be any of"), "{e}");
    let e = bad("[[phase]]\ntask = \"a\"\nrule = { cron = \"@daily\", require = [\"f\"] }\n");
    assert!(e.contains("phase \"a\".rule.require"), "{e}");
    // Several problems are all reported.
    let e = bad("[[phase]]\ntask = \"a\"\n[[phase]]\ntask = \"b\"\ndepends_on = \"zz\"\n");
    assert_eq!(e.lines().count(), 2, "{e}");
}

#[test]
fn flowlord_files_load_with_jobs_retries_and_parents_by_type() {
    let parsed = config::parse(
        &ConfigFile::new(
            "f.toml",
            r#"
[[Phase]]
task = "topic_name"
dependsOn = ""
rule = "cron=0 * * * *&offset=-4h&job=t2"
retry = 3
template = "?date={yyyy}-{mm}-{dd}"

[[Phase]]
task = "task1"
dependsOn = "topic_name"
rule = "retry_delay=30s"
retry = 3
template = "?hour={yyyy}-{mm}-{dd}T{hh}"

[[Phase]]
task = "files"
rule = "files=/folder/*/*.txt"
template = "{meta:file}?opt=true"
"#,
        ),
        "f.toml",
    )
    .unwrap();
    let w = &parsed.workflow;
    let root = w.phase(0);
    assert_eq!(
        (root.kind.as_str(), root.job.as_str(), root.name.as_str()),
        ("topic_name", "t2", "topic_name:t2")
    );
    assert_eq!(root.offset, -chrono::Duration::hours(4));
    let child = w.phase(1);
    assert_eq!(
        child.parents,
        [0],
        "dependsOn by type finds the phase with a job"
    );
    assert_eq!(child.retry.retries, 3);
    assert_eq!(child.retry.delay, std::time::Duration::from_secs(30));
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    assert!(parsed.warnings[0].contains("files="));
}

#[test]
fn a_run_rebuilt_from_its_records_decides_the_same_and_nothing_twice() {
    let mut s = Sim::new(DIAMOND);
    let key = s.tick("a", "2024-01-02T00:00:00Z");
    let (tasks, _) = s.send();
    s.finish(&tasks[0], TaskResult::Complete, &[]);
    let (tasks, _) = s.send();
    let (b, c) = (Sim::task_of(&tasks, "b"), Sim::task_of(&tasks, "c"));
    s.finish(&b, TaskResult::Complete, &[]);

    // "Restart": a new engine fed the records so far.
    let records: Vec<Record> = s
        .records
        .iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, r)| r.clone())
        .collect();
    let workflow = s.engine.workflow("w.toml").unwrap().clone();
    let mut t = Sim {
        engine: Engine::new([workflow], Some("failed".into())),
        now: s.now,
        records: Vec::new(),
    };
    t.engine.restore(&records).unwrap();
    for phase in ["a", "b", "c", "d"] {
        assert_eq!(t.status(&key, phase), s.status(&key, phase), "{phase}");
    }
    assert!(t.send().0.is_empty(), "nothing left to send");
    // b's done comes again (it was not acked before the restart): d is not started yet, nor twice.
    t.finish(&b, TaskResult::Complete, &[]);
    assert!(t.send().0.is_empty());
    t.finish(&c, TaskResult::Complete, &[]);
    assert_eq!(t.sent_phases(), ["d"]);
    t.finish(&c, TaskResult::Complete, &[]);
    assert!(t.send().0.is_empty());

    // A journal cut short after b's done record: the children it should have queued are queued
    // when b's done comes again.
    let upto = records
        .iter()
        .position(|r| matches!(r, Record::Done { phase, .. } if phase == "a"))
        .unwrap();
    let mut u = Sim {
        engine: Engine::new([s.engine.workflow("w.toml").unwrap().clone()], None),
        now: s.now,
        records: Vec::new(),
    };
    u.engine.restore(&records[..=upto]).unwrap();
    assert!(u.send().0.is_empty());
    let root_done = s.records.iter().find_map(|(_, r)| match r {
        Record::Done { phase, task, .. } if phase == "a" => Some(task.clone()),
        _ => None,
    });
    u.deliver(&root_done.unwrap());
    assert_eq!(u.sent_phases(), ["b", "c"]);
}
