//! The flow service on the in-process bus with workers in the test: a diamond end to end, crashes at
//! the two moments a send can be in doubt, retries and a restart while one is pending, cron ticks
//! across a restart, and hot reload keeping the last good workflow.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use taskbus_bus::{
    Backend, Bus, BusError, BusOptions, Capabilities, Consumer, ConsumerOptions, Outgoing, Task,
    TaskResult,
};
use taskbus_taskmaster::clock::{Clock, ManualClock};
use taskbus_taskmaster::flow::{
    journal, Engine, FlowOptions, FlowService, RunInfo, RunKey, RunOutcome, WorkflowSet,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn mem_bus(test: &str) -> (Bus, String) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let url = format!("mem:{test}-{}", uuid::Uuid::new_v4().simple());
    (Bus::connect(&url).await.unwrap(), url)
}

struct Setup {
    dir: tempfile::TempDir,
    clock: ManualClock,
}

impl Setup {
    fn new(toml: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("wf")).unwrap();
        std::fs::write(dir.path().join("wf/w.toml"), toml).unwrap();
        Setup {
            dir,
            clock: ManualClock::new(utc("2024-01-02T09:59:30Z")),
        }
    }

    fn workflows(&self) -> PathBuf {
        self.dir.path().join("wf")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn options(&self) -> FlowOptions {
        let mut o = FlowOptions::new(self.state());
        o.reload_every = Some(Duration::from_secs(5));
        o
    }

    fn start(&self, bus: Bus) -> (CancellationToken, JoinHandle<()>) {
        let set = WorkflowSet::load(&self.workflows()).unwrap();
        let service =
            FlowService::new(bus, set, Arc::new(self.clock.clone()), self.options()).unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move { service.run(token).await.unwrap() });
        (stop, handle)
    }

    /// Every run in the journals, rebuilt with the current workflow files.
    fn runs(&self) -> Vec<taskbus_taskmaster::flow::Run> {
        let set = WorkflowSet::load(&self.workflows()).unwrap();
        let mut engine = Engine::new(set.workflows().cloned(), None);
        let mut out = Vec::new();
        for path in journal::all_runs(&self.state()).unwrap() {
            let file = journal::read_run(&path).unwrap();
            let (key, _) = engine.restore(&file.records).unwrap();
            out.push(engine.run(&key).unwrap().clone());
        }
        out
    }

    fn outcome(&self, key: &RunKey) -> Option<RunOutcome> {
        self.runs()
            .into_iter()
            .find(|r| r.key == *key)
            .map(|r| r.outcome())
    }
}

/// What workers did: every task received, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Task>>>);

impl Log {
    fn tasks(&self) -> Vec<Task> {
        self.0.lock().unwrap().clone()
    }

    /// How many times each phase ran (counting retries).
    fn runs_per_phase(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for t in self.tasks() {
            *out.entry(t.meta.get("phase").unwrap_or("").to_owned())
                .or_default() += 1;
        }
        out
    }
}

type Decide = Arc<dyn Fn(&Task) -> TaskResult + Send + Sync>;

fn always_complete() -> Decide {
    Arc::new(|_| TaskResult::Complete)
}

/// A worker per topic: records the task, publishes its done task (times from the test's clock),
/// acks.
fn workers(
    bus: &Bus,
    clock: &ManualClock,
    topics: &[&str],
    log: &Log,
    decide: &Decide,
) -> Vec<JoinHandle<()>> {
    topics
        .iter()
        .map(|topic| {
            let (bus, topic, log, decide) = (
                bus.clone(),
                (*topic).to_owned(),
                log.clone(),
                decide.clone(),
            );
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut sub = bus.subscribe(&topic, "workers").await.unwrap();
                while let Ok(Some(r)) = sub.next().await {
                    log.0.lock().unwrap().push(r.task.clone());
                    let mut done = r.task.clone();
                    done.start();
                    let result = decide(&done);
                    done.end(result, format!("{result} from the test worker"));
                    done.started = Some(clock.now());
                    done.ended = Some(clock.now());
                    done.meta.set("rows", done.kind.len());
                    bus.send("done", &done).await.unwrap();
                    r.ack().await.unwrap();
                }
            })
        })
        .collect()
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const DIAMOND: &str = r#"
[[phase]]
task = "a"
rule = { manual = true }
template = "?day={yyyy}-{mm}-{dd}"
[[phase]]
task = "b"
depends_on = "a"
template = "b-of-{meta:rows}"
[[phase]]
task = "c"
depends_on = "a"
[[phase]]
task = "d"
depends_on = ["b", "c"]
template = "{meta:b.rows}/{meta:c.rows}"
"#;

/// Sends the root of a run of the diamond by hand, as `taskbus flow start` does.
async fn start_run(bus: &Bus, run: &str) -> RunKey {
    let file = taskbus_taskmaster::config::ConfigFile::new("w.toml", DIAMOND);
    let w = taskbus_taskmaster::flow::config::parse(&file, "w.toml")
        .unwrap()
        .workflow;
    let scheduled = utc("2024-01-02T00:00:00Z");
    let info = RunInfo { run, scheduled };
    let root = w
        .build_task(0, &info, scheduled, &w.template_meta(0, &info, &[]))
        .unwrap();
    assert_eq!(root.info, "?day=2024-01-02");
    bus.send("a", &root).await.unwrap();
    RunKey {
        workflow: "w.toml".into(),
        run: run.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_runs_end_to_end_each_phase_once() {
    let (bus, _) = mem_bus("flow-diamond").await;
    let s = Setup::new(DIAMOND);
    let log = Log::default();
    let _w = workers(
        &bus,
        &s.clock,
        &["a", "b", "c", "d"],
        &log,
        &always_complete(),
    );
    let (stop, handle) = s.start(bus.clone());
    let key = start_run(&bus, "run-1").await;
    wait_for("the run to complete", || {
        s.outcome(&key) == Some(RunOutcome::Completed)
    })
    .await;
    let counts = log.runs_per_phase();
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let d = log.tasks().into_iter().find(|t| t.kind == "d").unwrap();
    assert_eq!(d.info, "1/1", "each parent's meta by name");
    assert_eq!(d.meta.get("run"), Some("run-1"));
    assert_eq!(d.meta.get("scheduled"), Some("2024-01-02T00:00:00Z"));
    stop.cancel();
    handle.await.unwrap();
}

/// A bus that, on one chosen send, stops before or after handing the message to the broker and then
/// never returns: the app is "killed" right there.
struct Stall {
    inner: Arc<dyn Backend>,
    sends: AtomicUsize,
    stall_at: usize,
    after: bool,
}

#[async_trait]
impl Backend for Stall {
    fn name(&self) -> &'static str {
        "stall"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        let n = self.sends.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.stall_at {
            if self.after {
                self.inner.send(topic, message.clone()).await?;
            }
            std::future::pending::<()>().await;
        }
        self.inner.send(topic, message).await
    }
    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.inner.consumer(topic, options).await
    }
    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// A bus whose sends take a millisecond after the broker has the message (a confirm on its way
/// back): a kill then often lands between the broker taking a task and the app recording it.
struct SlowConfirm {
    inner: Arc<dyn Backend>,
}

#[async_trait]
impl Backend for SlowConfirm {
    fn name(&self) -> &'static str {
        "slow-confirm"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        self.inner.send(topic, message).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.inner.consumer(topic, options).await
    }
    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }
}

async fn crash_in_a_send(after: bool) {
    let (bus, url) = mem_bus("flow-crash").await;
    let s = Setup::new(DIAMOND);
    let log = Log::default();
    let _w = workers(
        &bus,
        &s.clock,
        &["a", "b", "c", "d"],
        &log,
        &always_complete(),
    );
    // The flow app's sends: b and c (after a), then d. It stalls on its 2nd send.
    let stall = Arc::new(Stall {
        inner: bus.backend().clone(),
        sends: AtomicUsize::new(0),
        stall_at: 2,
        after,
    });
    let stalling = Bus::from_backend(stall.clone(), BusOptions::default(), &url);
    let (_, handle) = s.start(stalling);
    let key = start_run(&bus, "run-crash").await;
    wait_for("the app to stall in a send", || {
        stall.sends.load(Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.abort(); // killed: nothing after this point runs
    let _ = handle.await;

    let (stop, handle) = s.start(bus.clone());
    wait_for("the run to complete", || {
        s.outcome(&key) == Some(RunOutcome::Completed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = log.runs_per_phase();
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "every phase exactly once: {counts:?}"
    );
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_bus_took_a_task_but_before_it_was_recorded_the_task_is_not_sent_twice() {
    crash_in_a_send(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_a_decided_task_reached_the_bus_the_task_is_sent_after_the_restart() {
    crash_in_a_send(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_their_delay_and_survive_a_restart() {
    let toml = DIAMOND.replace(
        "task = \"b\"\ndepends_on = \"a\"",
        "task = \"b\"\ndepends_on = \"a\"\nretry = { retries = 3, delay = \"10s\" }",
    );
    let (bus, _) = mem_bus("flow-retry").await;
    let s = Setup::new(&toml);
    let log = Log::default();
    let decide: Decide = Arc::new(|t: &Task| {
        if t.kind == "b" && t.attempt() < 2 {
            TaskResult::Error
        } else {
            TaskResult::Complete
        }
    });
    let _w = workers(&bus, &s.clock, &["a", "b", "c", "d"], &log, &decide);
    let (stop, handle) = s.start(bus.clone());
    let key = start_run(&bus, "run-retry").await;
    let b_runs = |log: &Log| log.tasks().iter().filter(|t| t.kind == "b").count();
    wait_for("b's first run", || b_runs(&log) == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b_runs(&log), 1, "the retry waits for its delay");

    // Restart while the retry is pending: the journal keeps it.
    stop.cancel();
    handle.await.unwrap();
    let (stop, handle) = s.start(bus.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b_runs(&log), 1);
    s.clock.advance(Duration::from_secs(3600));
    wait_for("b's retry", || b_runs(&log) == 2).await;
    s.clock.advance(Duration::from_secs(3600));
    wait_for("the run to complete", || {
        s.outcome(&key) == Some(RunOutcome::Completed)
    })
    .await;
    let counts = log.runs_per_phase();
    assert_eq!(counts["b"], 3, "{counts:?}");
    assert_eq!(
        (counts["a"], counts["c"], counts["d"]),
        (1, 1, 1),
        "{counts:?}"
    );
    let attempts: Vec<u32> = log
        .tasks()
        .iter()
        .filter(|t| t.kind == "b")
        .map(Task::attempt)
        .collect();
    assert_eq!(attempts, [0, 1, 2]);
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_start_one_run_each_and_a_restart_does_not_repeat_them() {
    let toml = DIAMOND.replace(
        "rule = { manual = true }",
        "rule = { cron = \"0 * * * *\" }",
    );
    let (bus, _) = mem_bus("flow-cron").await;
    let s = Setup::new(&toml);
    let log = Log::default();
    let _w = workers(
        &bus,
        &s.clock,
        &["a", "b", "c", "d"],
        &log,
        &always_complete(),
    );
    let (stop, handle) = s.start(bus.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.clock.set(utc("2024-01-02T10:00:00Z"));
    wait_for("the 10:00 run", || log.tasks().len() == 4).await;
    stop.cancel();
    handle.await.unwrap();
    let (stop, handle) = s.start(bus.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(log.tasks().len(), 4, "the handled tick is not sent again");
    s.clock.set(utc("2024-01-02T11:00:00Z"));
    wait_for("the 11:00 run", || log.tasks().len() == 8).await;
    let runs: std::collections::HashSet<String> = log
        .tasks()
        .iter()
        .map(|t| t.meta.get("run").unwrap().to_owned())
        .collect();
    assert_eq!(runs.len(), 2);
    let a: Vec<String> = log
        .tasks()
        .iter()
        .filter(|t| t.kind == "a")
        .map(|t| t.meta.get("scheduled").unwrap().to_owned())
        .collect();
    assert_eq!(a, ["2024-01-02T10:00:00Z", "2024-01-02T11:00:00Z"]);
    stop.cancel();
    handle.await.unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_last_good_workflow_and_a_good_one_is_used() {
    let (bus, _) = mem_bus("flow-reload").await;
    let s = Setup::new(DIAMOND);
    let log = Log::default();
    let _w = workers(
        &bus,
        &s.clock,
        &["a", "b", "c", "d", "e"],
        &log,
        &always_complete(),
    );
    let (stop, handle) = s.start(bus.clone());
    let file = s.workflows().join("w.toml");

    write(
        &file,
        &format!("{DIAMOND}\n[[phase]]\ntask = \"e\"\ndepends_on = \"nope\"\n"),
    );
    s.clock.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = start_run(&bus, "run-1").await;
    wait_for("run-1 on the last good workflow", || log.tasks().len() == 4).await;

    write(
        &file,
        &format!("{DIAMOND}\n[[phase]]\ntask = \"e\"\ndepends_on = \"d\"\n"),
    );
    s.clock.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key2 = start_run(&bus, "run-2").await;
    wait_for("run-2 with phase e", || {
        log.tasks().iter().any(|t| t.kind == "e")
    })
    .await;
    wait_for("run-2 to complete", || {
        s.outcome(&key2) == Some(RunOutcome::Completed)
    })
    .await;
    assert_eq!(log.tasks().len(), 9, "run-1 with 4 phases, run-2 with 5");
    // run-1 finished before e existed; read with the new version, e waits for a d that is done.
    assert!(
        matches!(s.outcome(&key), Some(RunOutcome::Incomplete { ref phase, .. }) if phase == "e"),
        "{:?}",
        s.outcome(&key)
    );

    // The file removed: runs it does not know start nothing; back, it works again.
    std::fs::remove_file(&file).unwrap();
    s.clock.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(200)).await;
    start_run(&bus, "run-3").await;
    wait_for("run-3's root", || log.tasks().len() == 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.tasks().len(),
        10,
        "no child of a run of a removed workflow"
    );
    write(&file, DIAMOND);
    s.clock.advance(Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key4 = start_run(&bus, "run-4").await;
    wait_for("run-4 to complete", || {
        s.outcome(&key4) == Some(RunOutcome::Completed)
    })
    .await;
    assert_eq!(log.tasks().len(), 14);
    stop.cancel();
    handle.await.unwrap();
}

/// A layered workflow with fan-out and fan-in everywhere.
fn layered(width: usize, layers: usize) -> String {
    let mut s =
        String::from("[[phase]]\nname = \"root\"\ntask = \"w\"\nrule = { manual = true }\n");
    for l in 0..layers {
        for k in 0..width {
            let parents: Vec<String> = if l == 0 {
                vec!["\"root\"".into()]
            } else {
                vec![
                    format!("\"p{}_{k}\"", l - 1),
                    format!("\"p{}_{}\"", l - 1, (k + 1) % width),
                ]
            };
            s.push_str(&format!(
                "[[phase]]\nname = \"p{l}_{k}\"\ntask = \"w\"\ndepends_on = [{}]\n",
                parents.join(", ")
            ));
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_at_random_moments_every_phase_still_runs_once() {
    const PHASES: usize = 1 + 4 * 10;
    let (bus, url) = mem_bus("flow-chaos").await;
    let slow = Bus::from_backend(
        Arc::new(SlowConfirm {
            inner: bus.backend().clone(),
        }),
        BusOptions::default(),
        &url,
    );
    let s = Setup::new(&layered(4, 10));
    let log = Log::default();
    // A worker taking 2 ms a task, so the app is killed many times during the run.
    let worker = {
        let (bus, log) = (bus.clone(), log.clone());
        tokio::spawn(async move {
            let mut sub = bus.subscribe("w", "workers").await.unwrap();
            while let Ok(Some(r)) = sub.next().await {
                log.0.lock().unwrap().push(r.task.clone());
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut done = r.task.clone();
                done.end(TaskResult::Complete, "ok");
                bus.send("done", &done).await.unwrap();
                r.ack().await.unwrap();
            }
        })
    };
    let scheduled = utc("2024-01-02T00:00:00Z");
    let set = WorkflowSet::load(&s.workflows()).unwrap();
    let w = set.get("w.toml").unwrap().clone();
    let info = RunInfo {
        run: "chaos",
        scheduled,
    };
    let root = w
        .build_task(0, &info, scheduled, &w.template_meta(0, &info, &[]))
        .unwrap();
    bus.send("w", &root).await.unwrap();
    let key = RunKey {
        workflow: "w.toml".into(),
        run: "chaos".into(),
    };
    let mut kills = 0;
    let start = Instant::now();
    // Pseudo-random but repeatable moments (xorshift).
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    while log.runs_per_phase().len() < PHASES {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress: {:?}",
            log.runs_per_phase()
        );
        let (_, handle) = s.start(slow.clone());
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_micros(200 + seed % 6_000)).await;
        handle.abort();
        let _ = handle.await;
        kills += 1;
    }
    let (stop, handle) = s.start(bus.clone());
    wait_for("the run to complete", || {
        s.outcome(&key) == Some(RunOutcome::Completed)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts = log.runs_per_phase();
    assert_eq!(counts.len(), PHASES, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "each phase once after {kills} kills: {counts:?}"
    );
    assert!(kills > 5, "the app was killed {kills} times");
    println!("the app was killed {kills} times during the run");
    stop.cancel();
    handle.await.unwrap();
    worker.abort();
}
