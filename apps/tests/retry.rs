//! `taskbus retry` as a process on the file bus, with a worker in this test that fails a task twice
//! and then succeeds; a retry app killed while a retry is pending; two replicas in one group.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use taskbus_bus::{Bus, ConsumerOptions, Task, TaskResult};

const BIN: &str = env!("CARGO_BIN_EXE_taskbus");

struct Setup {
    dir: tempfile::TempDir,
    topic: String,
    done: String,
    failed: String,
    url: String,
}

fn setup(name: &str, bus_options: &str, rule: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (topic, done, failed) = (
        format!("{name}-{id}"),
        format!("done-{id}"),
        format!("failed-{id}"),
    );
    let url = format!("file://{}{bus_options}", dir.path().join("bus").display());
    std::fs::write(
        dir.path().join("retry.toml"),
        format!("done_topic = \"{done}\"\nfailed_topic = \"{failed}\"\n[[rule]]\ntype = \"{topic}\"\n{rule}"),
    )
    .unwrap();
    Setup {
        dir,
        topic,
        done,
        failed,
        url,
    }
}

impl Setup {
    fn retry(&self, log: &str, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        Command::new(BIN)
            .args(["--bus", &self.url, "retry", "--config"])
            .arg(self.dir.path().join("retry.toml"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    async fn bus(&self) -> Bus {
        Bus::connect(&self.url).await.unwrap()
    }

    /// Every task on `topic`, read to the end in a fresh group.
    async fn read_all(&self, topic: &str) -> Vec<Task> {
        let bus = self.bus().await;
        let group = format!("check-{}", uuid::Uuid::new_v4().simple());
        let mut sub = bus
            .subscribe_with(topic, ConsumerOptions::group(group).finite(true))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        while let Some(r) = sub.next().await.unwrap() {
            tasks.push(r.task.clone());
            r.ack().await.unwrap();
        }
        tasks
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn stop(mut child: Child) {
    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "taskbus retry exited with {status}");
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run of the test worker: the task as received, when, and the done task it published.
#[derive(Debug, Clone)]
struct Run {
    task: Task,
    received: DateTime<Utc>,
    done: Task,
}

/// A worker that fails attempts 0 and 1 of each task and completes attempt 2.
async fn flaky_worker(
    bus: Bus,
    topic: String,
    done_topic: String,
    runs: std::sync::Arc<std::sync::Mutex<Vec<Run>>>,
) {
    let mut sub = bus.subscribe(&topic, "workers").await.unwrap();
    while let Ok(Some(received)) = sub.next().await {
        let at = Utc::now();
        let mut done = received.task.clone();
        done.start();
        if done.attempt() < 2 {
            done.end(
                TaskResult::Error,
                format!("failing attempt {}", done.attempt()),
            );
        } else {
            done.end(TaskResult::Complete, "finally");
        }
        bus.send(&done_topic, &done).await.unwrap();
        runs.lock().unwrap().push(Run {
            task: received.task.clone(),
            received: at,
            done,
        });
        received.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_failing_twice_is_retried_twice_with_the_backoff_delays() {
    let s = setup(
        "flaky",
        "",
        "retries = 3\ndelay = \"1s\"\nbackoff = \"linear\"\n",
    );
    let retry = s.retry("retry.log", &[]);
    let bus = s.bus().await;
    let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Run>::new()));
    let worker = tokio::spawn(flaky_worker(
        bus.clone(),
        s.topic.clone(),
        s.done.clone(),
        runs.clone(),
    ));
    let task = Task::new(&s.topic, "s3://bucket/input.csv");
    bus.send(&s.topic, &task).await.unwrap();

    wait_for("three runs", Duration::from_secs(30), || {
        runs.lock().unwrap().len() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(retry);
    worker.abort();

    let runs = runs.lock().unwrap().clone();
    let attempts: Vec<u32> = runs.iter().map(|r| r.task.attempt()).collect();
    assert_eq!(attempts, [0, 1, 2], "exactly two retries: {runs:#?}");
    assert!(
        runs.iter().all(|r| r.task.id == task.id),
        "a retried task keeps its id"
    );
    for (i, delay) in [(1usize, 1i64), (2, 2)] {
        let waited = runs[i].received - runs[i - 1].done.ended.unwrap();
        assert!(
            waited >= chrono::Duration::seconds(delay),
            "retry {i} came after {waited}, before its {delay}s delay"
        );
        assert!(
            waited < chrono::Duration::seconds(delay + 10),
            "retry {i} came after {waited}"
        );
    }
    let history: Vec<&str> = runs[2].task.meta.get_all("retry_history").collect();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history[0].starts_with("0|error|") && history[0].ends_with("|failing attempt 0"),
        "{history:?}"
    );
    assert!(s.read_all(&s.failed).await.is_empty());
    assert_eq!(
        s.read_all(&s.topic).await.len(),
        3,
        "the first run and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_retry_survives_the_retry_app_being_killed() {
    let s = setup("killed", "?lease=1s", "retries = 1\ndelay = \"5s\"\n");
    let bus = s.bus().await;
    let mut done = Task::new(&s.topic, "x");
    done.end(TaskResult::Error, "boom");
    let due = done.ended.unwrap() + chrono::Duration::seconds(5);
    bus.send(&s.done, &done).await.unwrap();

    let first = s.retry("first.log", &["--keepalive", "200ms"]);
    wait_for("the retry to be held", Duration::from_secs(10), || {
        s.log("first.log").contains("retry scheduled (held)")
    })
    .await;
    signal(&first, "-KILL");
    let mut first = first;
    let _ = first.wait();

    let second = s.retry("second.log", &["--keepalive", "200ms"]);
    let before_due = (due - chrono::Duration::milliseconds(700) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(before_due).await;
    assert!(
        s.read_all(&s.topic).await.is_empty(),
        "no retry before it is due"
    );
    wait_for("the retry", Duration::from_secs(20), || {
        s.log("second.log").contains("retry sent")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(second);

    let retries = s.read_all(&s.topic).await;
    assert_eq!(retries.len(), 1, "the retry is sent once: {retries:#?}");
    assert_eq!(
        (retries[0].id.as_str(), retries[0].attempt()),
        (done.id.as_str(), 1)
    );
    assert!(!s.log("first.log").contains("retry sent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_in_one_group_retry_each_failure_once() {
    let s = setup("shared", "", "retries = 1\ndelay = \"1s\"\n");
    let bus = s.bus().await;
    let mut ids = Vec::new();
    let failures: Vec<Task> = (0..20)
        .map(|i| {
            let mut t = Task::new(&s.topic, format!("item-{i}"));
            t.end(TaskResult::Error, "boom");
            ids.push(t.id.clone());
            t
        })
        .collect();
    let a = s.retry("a.log", &[]);
    let b = s.retry("b.log", &[]);
    bus.send_all(&s.done, &failures, 8).await.unwrap();
    let count = || {
        s.log("a.log").matches("retry sent").count() + s.log("b.log").matches("retry sent").count()
    };
    wait_for("20 retries", Duration::from_secs(30), || count() >= 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(a);
    stop(b);

    let retries = s.read_all(&s.topic).await;
    let mut got: Vec<String> = retries.iter().map(|t| t.id.clone()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "each failure retried exactly once");
    assert!(retries.iter().all(|t| t.attempt() == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_and_no_retry_tasks_go_to_the_failed_topic() {
    let s = setup("exhausted", "", "retries = 1\ndelay = \"100ms\"\n");
    let bus = s.bus().await;
    let mut last = Task::new(&s.topic, "x").meta("attempt", 1);
    last.end(TaskResult::Error, "boom again");
    let mut refused = Task::new(&s.topic, "y").meta("no_retry", "true");
    refused.end(TaskResult::Error, "bad input");
    let mut warned = Task::new(&s.topic, "z");
    warned.end(TaskResult::Warn, "meh");
    bus.send_all(&s.done, &[last.clone(), refused.clone(), warned], 4)
        .await
        .unwrap();
    let retry = s.retry("retry.log", &[]);
    wait_for("two failures", Duration::from_secs(20), || {
        s.log("retry.log").matches("task failed for good").count() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(retry);
    let failed = s.read_all(&s.failed).await;
    assert_eq!(failed.len(), 2, "{failed:#?}");
    let reason = |id: &str| {
        failed
            .iter()
            .find(|t| t.id == id)
            .unwrap()
            .meta
            .get("failed_reason")
            .unwrap()
            .to_owned()
    };
    assert!(reason(&last.id).contains("after 1 retries"));
    assert!(reason(&refused.id).contains("no_retry"));
    assert!(s.read_all(&s.topic).await.is_empty(), "nothing retried");
}

fn check(text: &str) -> (String, i32) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("retry.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["retry", "--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr)
        .unwrap()
        .replace(path.to_str().unwrap(), "retry.toml");
    (
        err + &String::from_utf8(out.stdout).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn bad_rules_files_name_the_line_and_key() {
    let (out, code) = check("[[rule]]\ntype = \"a\"\ndelay = \"1s\"\nbackof = \"linear\"\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("error: retry.toml:4:1: unknown field `backof`"),
        "{out}"
    );
    let (out, code) = check("[[rule]]\ntype = \"a\"\nresults = [\"error\", \"alert\"]\n");
    assert_eq!(code, 2);
    assert!(
        out.starts_with("error: retry.toml:3:11: rule[1].results: result alert is never retried"),
        "{out}"
    );
    let (out, code) = check("[[rule]]\ntype = \"a\"\nretries = 2\n");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("type a:"), "{out}");
}
