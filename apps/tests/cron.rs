//! `taskbus cron` as a process on the file bus: ticks every two seconds, two replicas sending each
//! tick once, catching up after a restart, and the errors of a bad rules file.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbus_bus::{Bus, ConsumerOptions, Task};

const BIN: &str = env!("CARGO_BIN_EXE_taskbus");

fn cron(dir: &Path, config: &Path, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new(BIN)
        .args([
            "--bus",
            &format!("file://{}", dir.join("bus").display()),
            "cron",
            "--config",
        ])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Stops `child` with SIGTERM and waits for it; it must exit 0.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "taskbus cron exited with {status}");
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Every task on `topic`, read to the end in a fresh group.
async fn read_all(dir: &Path, topic: &str) -> Vec<Task> {
    let bus = Bus::connect(&format!("file://{}", dir.join("bus").display()))
        .await
        .unwrap();
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

/// The scheduled time of each task, checking that none is sent twice.
fn ticks_once(tasks: &[Task]) -> Vec<DateTime<Utc>> {
    let mut seen: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for t in tasks {
        let s = t.meta.get("scheduled").expect("meta.scheduled");
        let tick = DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        *seen.entry(tick).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks sent more than once: {twice:?}");
    seen.into_keys().collect()
}

fn assert_every_two_seconds(ticks: &[DateTime<Utc>]) {
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::seconds(2),
            "a gap or a stray tick in {ticks:?}"
        );
    }
}

fn rules(dir: &Path, topic: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("cron.toml");
    std::fs::write(
        &path,
        format!(
            "[[rule]]\nname = \"every2s\"\ncron = \"*/2 * * * * *\"\ntype = \"{topic}\"\njob = \"tick\"\n\
             template = \"at={{yyyy}}-{{mm}}-{{dd}}T{{hh}}:{{min}}:{{ss}}&host={{host}}\"\n\
             offset = \"-1h\"\nmeta = {{ owner = \"ops\" }}\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn topic(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_fires_the_rule_every_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("cron-ticks");
    let config = rules(dir.path(), &topic, "");
    let child = cron(dir.path(), &config, "cron.log");
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    stop(child);

    let tasks = read_all(dir.path(), &topic).await;
    let ticks = ticks_once(&tasks);
    assert!(
        ticks.len() >= 3,
        "{} ticks in 7.5 s: {ticks:?}",
        ticks.len()
    );
    assert_every_two_seconds(&ticks);
    for task in &tasks {
        let tick = DateTime::parse_from_rfc3339(task.meta.get("scheduled").unwrap())
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(tick.timestamp() % 2, 0);
        let expected = (tick - chrono::Duration::hours(1))
            .format("at=%Y-%m-%dT%H:%M:%S")
            .to_string();
        assert!(
            task.info.starts_with(&expected),
            "{} does not start with {expected}",
            task.info
        );
        assert_eq!(
            (task.kind.as_str(), task.job.as_str()),
            (topic.as_str(), "tick")
        );
        assert_eq!(task.meta.get("owner"), Some("ops"));
    }
    let ids: std::collections::HashSet<_> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), tasks.len(), "each tick has its own id");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_cron_replicas_send_each_tick_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("cron-replicas");
    let config = rules(dir.path(), &topic, "");
    let a = cron(dir.path(), &config, "a.log");
    let b = cron(dir.path(), &config, "b.log");
    tokio::time::sleep(Duration::from_millis(9_000)).await;
    stop(a);
    stop(b);

    let ticks = ticks_once(&read_all(dir.path(), &topic).await);
    assert!(ticks.len() >= 3, "{ticks:?}");
    assert_every_two_seconds(&ticks);
    let logs = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let sent = |log: &str| log.matches("tick sent").count();
    assert_eq!(sent(&logs("a.log")) + sent(&logs("b.log")), ticks.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_cron_catches_up_the_ticks_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let topic = topic("cron-catch-up");
    let config = rules(
        dir.path(),
        &topic,
        "catch_up = \"all\"\ncatch_up_window = \"1h\"\n",
    );
    let first = cron(dir.path(), &config, "first.log");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    stop(first);
    let before = ticks_once(&read_all(dir.path(), &topic).await);
    assert!(!before.is_empty());

    // Down for more than a minute's grace would take too long; a tick counts as missed only once it
    // is later than the grace, so run the second start with a grace of zero.
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let log = std::fs::File::create(dir.path().join("second.log")).unwrap();
    let second = Command::new(BIN)
        .args([
            "--bus",
            &format!("file://{}", dir.path().join("bus").display()),
            "cron",
            "--grace",
            "0s",
            "--config",
        ])
        .arg(&config)
        .stderr(log)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    stop(second);

    let ticks = ticks_once(&read_all(dir.path(), &topic).await);
    assert_every_two_seconds(&ticks);
    assert!(
        ticks.len() >= before.len() + 4,
        "the missed ticks were sent: {before:?} then {ticks:?}"
    );
    let log = std::fs::read_to_string(dir.path().join("second.log")).unwrap();
    assert!(log.contains("resuming after the last tick sent"), "{log}");
    assert!(log.contains("catch_up=true"), "{log}");
}

#[test]
fn next_prints_fire_times_and_checks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cron.toml");
    std::fs::write(
        &path,
        "[[rule]]\nname = \"daily\"\ncron = \"@daily\"\ntimezone = \"Asia/Tokyo\"\ntype = \"report\"\ntemplate = \"day={yyyy}-{mm}-{dd}\"\n",
    )
    .unwrap();
    let out = run(&["cron", "--config", path.to_str().unwrap(), "--next", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("rule daily: @daily (Asia/Tokyo) -> type report on topic report"),
        "{text}"
    );
    let times: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(times.len(), 3, "{text}");
    for line in times {
        assert!(
            line.trim_start().contains("T00:00:00+09:00  (") && line.contains("T15:00:00Z)"),
            "{line}"
        );
    }
}

fn bad_file(text: &str) -> (String, i32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cron.toml");
    std::fs::write(&path, text).unwrap();
    let out = run(&["cron", "--config", path.to_str().unwrap(), "--next", "1"]);
    let err = String::from_utf8(out.stderr)
        .unwrap()
        .replace(path.to_str().unwrap(), "cron.toml");
    (err, out.status.code().unwrap_or(-1))
}

#[test]
fn bad_rules_files_are_errors_naming_the_line_and_key() {
    let (err, code) = bad_file("[[rule]]\ntype = \"x\"\ncron = \"0 0 32 * *\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: cron.toml:3:8: rule[1].cron: "),
        "{err}"
    );
    assert!(
        err.contains("day of month field \"32\": 32 is out of range 1-31"),
        "{err}"
    );

    let (err, code) =
        bad_file("[[rule]]\ntype = \"x\"\ncron = \"@daily\"\ntemplate = \"{yyyy}/{dday}\"\n");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: cron.toml:4:12: rule[1].template: unknown placeholder {dday}"),
        "{err}"
    );

    let (err, code) = bad_file("[[rule]]\ntype = \"x\"\ncron = \"@daily\"\ntimezon = \"UTC\"\n");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: cron.toml:4:1: unknown field `timezon`"),
        "{err}"
    );

    let (err, _) =
        bad_file("[[rule]]\ntype = \"x\"\ncron = \"@daily\"\ntimezone = \"Mars/Olympus\"\n");
    assert!(
        err.starts_with("error: cron.toml:4:12: rule[1].timezone:"),
        "{err}"
    );

    let (err, _) = bad_file(
        "[[rule]]\ntype = \"x\"\ncron = \"@daily\"\n[[rule]]\ntype = \"x\"\ncron = \"@hourly\"\n",
    );
    assert!(
        err.contains("cron.toml:4:") && err.contains("unique name"),
        "{err}"
    );
}
