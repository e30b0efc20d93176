//! Real worker processes on the file bus: SIGKILL mid-task (nothing lost, duplicates only among the
//! tasks in flight at the kill) and SIGTERM (the drain rules).
//!
//! The worker process is this test binary run again with `TASKBUS_TEST_CHILD` set: the test
//! `process::child_worker` then runs a launcher configured by environment variables, and does
//! nothing otherwise.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use taskbus_bus::{Bus, Task, TaskResult};
use taskbus_worker::{from_fn, Launcher, LauncherOptions, Outcome, TaskContext};

use crate::util::{tasks, within};

const CHILD: &str = "TASKBUS_TEST_CHILD";

/// The worker process. Environment: `TASKBUS_TEST_CHILD` (the bus URL), `CHILD_TOPIC`,
/// `CHILD_MAX_IN_PROGRESS`, `CHILD_TASK_MS`, `CHILD_KILL_MS`, `CHILD_LOG` (a file where each task
/// start is appended as `start <id> <pid>`).
#[test]
fn child_worker() {
    let Ok(url) = std::env::var(CHILD) else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let num = |name: &str| {
        var(name)
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (topic, log) = (var("CHILD_TOPIC"), var("CHILD_LOG"));
    let (task_ms, kill_ms) = (num("CHILD_TASK_MS"), num("CHILD_KILL_MS"));
    let max_in_progress = usize::try_from(num("CHILD_MAX_IN_PROGRESS")).expect("a count");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let report = runtime.block_on(async move {
        let bus = Bus::connect(&url).await.expect("the file bus");
        let pid = std::process::id();
        let worker = from_fn(move |task: Task, ctx: TaskContext| {
            let log = log.clone();
            async move {
                append_line(&log, &format!("start {} {pid}", task.id));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(task_ms)) => {}
                    () = ctx.cancelled() => return Outcome::error(format!("pid {pid} cancelled")),
                }
                Outcome::complete(format!("pid {pid} delivery {}", ctx.delivery_count()))
            }
        });
        let options = LauncherOptions::default()
            .max_in_progress(max_in_progress)
            .worker_kill_time(Duration::from_millis(kill_ms))
            .cancel_grace(Duration::from_millis(100))
            .heartbeat(Some(Duration::from_millis(200)));
        let report = Launcher::new(bus.clone(), topic, options)
            .run(worker)
            .await
            .expect("the launcher runs");
        bus.close().await.expect("closed");
        report
    });
    println!("CHILD REPORT {report}");
}

fn append_line(path: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the start log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("a start line");
}

/// A directory with a file bus, a start log and the input topic.
struct Setup {
    dir: tempfile::TempDir,
    url: String,
    bus: Bus,
}

impl Setup {
    async fn new(inputs: &[Task]) -> Setup {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("file://{}?lease=1s", dir.path().display());
        let bus = Bus::connect(&url).await.expect("the file bus");
        bus.send_all("jobs", inputs, 64).await.expect("sent");
        Setup { dir, url, bus }
    }

    fn log(&self) -> String {
        self.dir.path().join("starts.log").display().to_string()
    }

    fn spawn(&self, max_in_progress: u32, task_ms: u64, kill_ms: u64) -> Child {
        let exe = std::env::current_exe().expect("the test binary");
        Command::new(exe)
            .args([
                "process::child_worker",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &self.url)
            .env("CHILD_TOPIC", "jobs")
            .env("CHILD_LOG", self.log())
            .env("CHILD_MAX_IN_PROGRESS", max_in_progress.to_string())
            .env("CHILD_TASK_MS", task_ms.to_string())
            .env("CHILD_KILL_MS", kill_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the worker process starts")
    }

    /// `(id, pid)` of every task start so far.
    fn starts(&self) -> Vec<(String, u32)> {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut parts = l.strip_prefix("start ")?.split(' ');
                Some((parts.next()?.to_owned(), parts.next()?.parse().ok()?))
            })
            .collect()
    }

    async fn done(&self) -> Vec<Task> {
        taskbus_worker::testing::read_all(&self.bus, "done")
            .await
            .expect("the done topic")
    }

    async fn wait_for(&self, what: &str, mut ready: impl FnMut(&[(String, u32)], &[Task]) -> bool) {
        within(120, async {
            loop {
                let (starts, done) = (self.starts(), self.done().await);
                if ready(&starts, &done) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        eprintln!("reached: {what}");
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status();
    assert!(
        status.expect("kill runs").success(),
        "kill -{name} {}",
        child.id()
    );
}

async fn exit_of(mut child: Child) -> (ExitStatus, String) {
    let status = within(120, async {
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_task_loses_nothing_and_redoes_only_tasks_in_flight() {
    const N: usize = 200;
    const SLOTS: u32 = 8;
    let inputs = tasks("job", N);
    let setup = Setup::new(&inputs).await;

    let first = setup.spawn(SLOTS, 40, 10_000);
    let first_pid = first.id();
    setup
        .wait_for("60 done by the first worker", |_, done| done.len() >= 60)
        .await;
    let mut first = first;
    first.kill().expect("SIGKILL");
    let (status, _) = exit_of(first).await;
    assert!(!status.success(), "killed: {status}");
    let started_by_first: HashSet<String> = setup
        .starts()
        .into_iter()
        .filter(|(_, pid)| *pid == first_pid)
        .map(|(id, _)| id)
        .collect();
    let done_by_first: HashSet<String> = setup.done().await.into_iter().map(|d| d.id).collect();
    let cut_off: HashSet<&String> = started_by_first.difference(&done_by_first).collect();

    let second = setup.spawn(SLOTS, 5, 10_000);
    let second_pid = second.id();
    let ids: HashSet<&str> = inputs.iter().map(|t| t.id.as_str()).collect();
    setup
        .wait_for("every task done", |_, done| {
            ids.iter().all(|id| done.iter().any(|d| d.id == *id))
        })
        .await;
    signal(&second, "TERM");
    let (status, _) = exit_of(second).await;
    assert!(
        status.success(),
        "the second worker drains and exits 0: {status}"
    );

    let done = setup.done().await;
    let mut by_id: HashMap<&str, Vec<&Task>> = HashMap::new();
    for d in &done {
        assert_eq!(d.result, Some(TaskResult::Complete), "{d:?}");
        by_id.entry(d.id.as_str()).or_default().push(d);
    }
    for input in &inputs {
        assert!(
            by_id.contains_key(input.id.as_str()),
            "task {} has no done task",
            input.id
        );
    }
    assert_eq!(by_id.len(), N, "no done task for an id that was not sent");
    let twice: Vec<&str> = by_id
        .iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    for id in &twice {
        assert!(
            started_by_first.contains(*id),
            "{id} done twice but never started by the killed worker"
        );
        let msgs: Vec<&str> = by_id[id].iter().map(|d| d.msg.as_str()).collect();
        assert_eq!(by_id[id].len(), 2, "{id}: {msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("pid {first_pid} "))),
            "{id}: {msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(&format!("pid {second_pid} "))),
            "{id}: {msgs:?}"
        );
    }
    for id in &cut_off {
        let redo = by_id[id.as_str()]
            .iter()
            .find(|d| d.msg.starts_with(&format!("pid {second_pid} ")));
        let redo = redo.unwrap_or_else(|| panic!("{id} cut off by the kill and never redone"));
        assert!(
            !redo.msg.ends_with("delivery 1"),
            "{id} redone as a first delivery: {}",
            redo.msg
        );
    }
    // Never started by the killed worker: done once, by the second. A first delivery, except the
    // lines the killed worker's file consumer had claimed ahead (it takes at least a quarter of
    // max_in_flight per lock, keeping the rest queued for the next free slot): their lease ran out
    // and they came back as a second delivery.
    let mut claimed_ahead = Vec::new();
    for (id, ds) in &by_id {
        if !started_by_first.contains(*id) {
            assert_eq!(ds.len(), 1, "{id} never started by the killed worker");
            let msg = &ds[0].msg;
            assert!(
                msg.starts_with(&format!("pid {second_pid} ")),
                "{id} done by the killed worker without a start: {msg}"
            );
            if !msg.ends_with("delivery 1") {
                assert!(msg.ends_with("delivery 2"), "{id}: {msg}");
                claimed_ahead.push(*id);
            }
        }
    }
    // Unacked at the kill: started and its done task unpublished (cut off) or published but not
    // yet acked (done twice), or claimed ahead. At most the slots, and the quarter more a claim
    // may take.
    let in_flight = cut_off.len() + twice.len() + claimed_ahead.len();
    let bound = (SLOTS + SLOTS / 4) as usize;
    assert!(
        in_flight <= bound,
        "{in_flight} unacked at the kill with {SLOTS} slots: cut off {cut_off:?}, done twice \
         {twice:?}, claimed ahead {claimed_ahead:?}"
    );
    eprintln!(
        "SIGKILL report: {N} tasks, {} done by the killed worker, {} cut off and redone, {} done twice \
         (published but not acked at the kill): {twice:?}, {} claimed ahead and redone: \
         {claimed_ahead:?}",
        done_by_first.len(),
        cut_off.len(),
        twice.len(),
        claimed_ahead.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_fetching_and_lets_running_tasks_finish() {
    let inputs = tasks("job", 20);
    let setup = Setup::new(&inputs).await;
    let child = setup.spawn(4, 1500, 20_000);
    setup
        .wait_for("4 tasks running", |starts, _| starts.len() >= 4)
        .await;
    signal(&child, "TERM");
    let (status, out) = exit_of(child).await;
    assert!(status.success(), "exit 0 after a drain: {status}");
    assert!(
        out.contains("CHILD REPORT stopped (shutdown): 4 consumed, 4 complete"),
        "{out}"
    );
    let starts = setup.starts();
    assert_eq!(
        starts.len(),
        4,
        "no task started after the signal: {starts:?}"
    );
    let done = setup.done().await;
    assert_eq!(done.len(), 4);
    for (id, _) in &starts {
        let d = done
            .iter()
            .find(|d| d.id == *id)
            .expect("a done task for each running task");
        assert_eq!(d.result, Some(TaskResult::Complete), "{d:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_kill_time_hands_tasks_back_and_a_second_signal_cuts_the_wait() {
    let inputs = tasks("job", 6);
    let setup = Setup::new(&inputs).await;

    // Tasks longer than the kill time: cancelled after it, handed back, nothing published.
    let child = setup.spawn(3, 3_600_000, 300);
    setup
        .wait_for("3 tasks running", |starts, _| starts.len() >= 3)
        .await;
    signal(&child, "TERM");
    let (status, out) = exit_of(child).await;
    assert!(status.success(), "{status}");
    assert!(out.contains("3 handed back"), "{out}");
    assert!(setup.done().await.is_empty());

    // A kill time of an hour, cut short by a second signal.
    let child = setup.spawn(3, 3_600_000, 3_600_000);
    setup
        .wait_for("3 more tasks running", |starts, _| starts.len() >= 6)
        .await;
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "TERM");
    let (status, out) = exit_of(child).await;
    assert!(status.success(), "{status}");
    assert!(out.contains("3 handed back"), "{out}");

    // Nothing was lost: a quick worker does all six, each as the delivery after the ones cut off.
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (id, _) in setup.starts() {
        *seen.entry(id).or_default() += 1;
    }
    let child = setup.spawn(6, 1, 10_000);
    setup
        .wait_for("all six done", |_, done| done.len() >= 6)
        .await;
    signal(&child, "TERM");
    let (status, _) = exit_of(child).await;
    assert!(status.success(), "{status}");
    let done = setup.done().await;
    assert_eq!(done.len(), 6);
    for d in &done {
        assert_eq!(d.result, Some(TaskResult::Complete), "{d:?}");
        let before = seen.get(&d.id).copied().unwrap_or(0);
        assert!(
            d.msg.ends_with(&format!(" delivery {}", before + 1)),
            "{before} runs before: {d:?}"
        );
    }
}

/// The crate docs' example binary, compiled into this test binary to be run as a child process.
mod hello {
    include!("../../examples/hello/worker.rs");

    pub(crate) fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

/// The hello example as a process, when `TASKBUS_HELLO_CHILD` is set.
#[test]
fn hello_child() {
    if std::env::var_os("TASKBUS_HELLO_CHILD").is_some() {
        hello::run().expect("the hello worker runs");
    }
}

#[test]
fn the_hello_example_on_stdio_drains_its_input_and_exits_0() {
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([
            "process::hello_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TASKBUS_HELLO_CHILD", "1")
        .env_remove("TASKBUS_BUS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hello worker starts");
    let inputs = [
        Task::new("hello", "world"),
        Task::new("hello", ""),
        Task::new("goodbye", "moon"),
    ];
    let mut stdin = child.stdin.take().expect("stdin");
    for task in &inputs {
        writeln!(stdin, "{}", task.to_json()).expect("a task written");
    }
    drop(stdin);
    let out = child
        .wait_with_output()
        .expect("the worker ends at the end of its input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit 0 at the end of input: {}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("stopped (end of input): 3 consumed, 1 complete, 2 error"),
        "{stderr}"
    );
    // The test harness of the child writes its own lines to stdout too (`test … ok`), and the first
    // done task follows `test process::hello_child ... ` on its line.
    let done: Vec<Task> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.find("{\"").map(|at| &l[at..]))
        .map(|l| Task::from_json(l.as_bytes()).expect("a done task"))
        .collect();
    assert_eq!(done.len(), 3, "{done:?}");
    let by_info = |info: &str| done.iter().find(|d| d.info == info).expect("a done task");
    assert_eq!(by_info("world").msg, "hello, world!");
    assert_eq!(by_info("world").result, Some(TaskResult::Complete));
    assert_eq!(by_info("").msg, "nobody to greet: set the task's info");
    assert_eq!(by_info("").meta.get("no_retry"), Some("true"));
    assert!(by_info("moon")
        .msg
        .starts_with("rejected: type \"goodbye\""));
}
