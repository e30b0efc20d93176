//! `taskbus backload` as a process: a dry run, a real run on the file bus, and bad flags.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use taskbus_bus::{Bus, ConsumerOptions, Task};

const BIN: &str = env!("CARGO_BIN_EXE_taskbus");

fn backload(bus: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--bus", bus, "backload"])
        .args(args)
        .output()
        .unwrap()
}

fn tasks_of(stdout: &[u8]) -> Vec<Task> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| Task::from_json(l.as_bytes()).unwrap())
        .collect()
}

#[test]
fn dry_run_prints_the_tasks_newest_first_when_reversed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = format!("file://{}", dir.path().join("bus").display());
    let out = backload(
        &bus,
        &[
            "--type",
            "report",
            "--template",
            "day={yyyy}-{mm}-{dd}&r={meta:region}",
            "--from",
            "2024-01-03",
            "--to",
            "2024-01-01",
            "--meta",
            "region=eu,us",
            "--dry-run",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let infos: Vec<String> = tasks_of(&out.stdout).into_iter().map(|t| t.info).collect();
    assert_eq!(
        infos,
        [
            "day=2024-01-03&r=eu",
            "day=2024-01-03&r=us",
            "day=2024-01-02&r=eu",
            "day=2024-01-02&r=us",
            "day=2024-01-01&r=eu",
            "day=2024-01-01&r=us",
        ]
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("dry run: would send 6 tasks of type report to topic report"),
        "{summary}"
    );
    assert!(summary.contains("newest first"), "{summary}");
    assert!(
        !dir.path().join("bus").exists(),
        "a dry run does not touch the bus"
    );
}

#[test]
fn hour_filters_at_and_meta_files() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(&rows, "{\"table\":\"a\"}\n{\"table\":\"b\",\"n\":2}\n").unwrap();
    let out = backload(
        "mem:",
        &[
            "--type",
            "load",
            "--template",
            "{meta:table}/{DAY_SLUG}/{hh}",
            "--from",
            "2024-01-01T00",
            "--to",
            "2024-01-01T23",
            "--by",
            "hour",
            "--on-hours",
            "0-3",
            "--off-hours",
            "1",
            "--meta-file",
            rows.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = tasks_of(&out.stdout);
    let infos: Vec<&str> = tasks.iter().map(|t| t.info.as_str()).collect();
    assert_eq!(
        infos,
        [
            "a/2024/01/01/00",
            "b/2024/01/01/00",
            "a/2024/01/01/02",
            "b/2024/01/01/02",
            "a/2024/01/01/03",
            "b/2024/01/01/03"
        ]
    );
    assert_eq!(tasks[1].meta.get("n"), Some("2"));
    assert_eq!(tasks[1].meta.get("scheduled"), Some("2024-01-01T00:00:00Z"));

    let out = backload(
        "mem:",
        &[
            "--type",
            "w",
            "--template",
            "{yyyy}-{mm}-{dd}T{hh}:{min}",
            "--from",
            "2024-01-01",
            "--to",
            "2024-03-01",
            "--by",
            "month",
            "--at",
            "06:30",
            "--timezone",
            "Europe/Paris",
            "--dry-run",
        ],
    );
    let infos: Vec<String> = tasks_of(&out.stdout).into_iter().map(|t| t.info).collect();
    assert_eq!(
        infos,
        ["2024-01-01T06:30", "2024-02-01T06:30", "2024-03-01T06:30"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_run_sends_every_task_and_sums_up() {
    let dir = tempfile::tempdir().unwrap();
    let bus = format!("file://{}", dir.path().join("bus").display());
    let out = backload(
        &bus,
        &[
            "--type",
            "hourly",
            "--template",
            "{SLUG}",
            "--from",
            "2024-01-01",
            "--to",
            "2024-01-31T23",
            "--by",
            "hour",
            "--topic",
            "hourly-in",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("sent 744 of 744 tasks of type hourly to topic hourly-in"),
        "{summary}"
    );

    let bus = Bus::connect(&bus).await.unwrap();
    let mut sub = bus
        .subscribe_with("hourly-in", ConsumerOptions::group("check").finite(true))
        .await
        .unwrap();
    let mut infos = std::collections::BTreeSet::new();
    while let Some(r) = sub.next().await.unwrap() {
        infos.insert(r.task.info.clone());
        r.ack().await.unwrap();
    }
    assert_eq!(infos.len(), 744);
    assert!(infos.contains("2024/01/01/00") && infos.contains("2024/01/31/23"));
}

#[test]
fn bad_flags_are_named() {
    let err = |args: &[&str]| {
        let out = backload("mem:", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let e = err(&["--type", "t", "--from", "2024-01-05", "--to", "01/02/2024"]);
    assert!(
        e.starts_with("error: --to: \"01/02/2024\" is not a time; write 2024-01-02"),
        "{e}"
    );
    let e = err(&[
        "--type",
        "t",
        "--from",
        "2024-01-05",
        "--template",
        "{yyyy}/{dday}",
    ]);
    assert!(
        e.starts_with("error: --template: unknown placeholder {dday}"),
        "{e}"
    );
    let e = err(&["--type", "t", "--from", "2024-01-05", "--by", "fortnight"]);
    assert!(e.starts_with("error: --by:"), "{e}");
    let e = err(&[
        "--type",
        "t",
        "--from",
        "2020-01-01",
        "--to",
        "2024-01-01",
        "--by",
        "hour",
        "--max-tasks",
        "1000",
    ]);
    assert!(e.contains("--max-tasks 1000"), "{e}");
    let e = err(&[
        "--type",
        "t",
        "--from",
        "2024-01-05",
        "--meta-file",
        "/nonexistent/rows.jsonl",
    ]);
    assert!(
        e.starts_with("error: --meta-file /nonexistent/rows.jsonl: cannot read it"),
        "{e}"
    );
}
