//! The quickstart walk-through (quickstart/run.sh), run end to end so it never rots.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory of the `taskbus` binary under test; the quickstart's binaries are built next to it.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_taskbus"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds hello-worker and hello-taskmaster when this test runs without them (`cargo test -p
/// taskbus-apps`); `cargo test --workspace` has built them already.
fn ensure_quickstart_binaries(dir: &Path) {
    if ["hello-worker", "hello-taskmaster"]
        .iter()
        .all(|b| dir.join(b).exists())
    {
        return;
    }
    let target = dir.parent().unwrap();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "-p", "taskbus-quickstart", "--target-dir"])
        .arg(target);
    if cfg!(feature = "nats") {
        cargo.args(["--features", "taskbus-quickstart/nats"]);
    }
    let status = cargo.status().unwrap();
    assert!(status.success(), "cannot build the quickstart binaries");
}

/// The NATS server for step 3, when this build has NATS and one answers.
fn nats_url() -> Option<String> {
    if !cfg!(feature = "nats") {
        return None;
    }
    let url =
        std::env::var("TASKBUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url
        .trim_start_matches("nats://")
        .split(['/', '?'])
        .next()?
        .to_owned();
    std::net::TcpStream::connect(addr).ok().map(|_| url)
}

#[test]
fn the_walk_through_runs_end_to_end_on_the_file_bus() {
    let bin = bin_dir();
    ensure_quickstart_binaries(&bin);
    let work = tempfile::tempdir().unwrap();
    let mut script = Command::new("bash");
    script
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../quickstart/run.sh"))
        .env("TASKBUS_BIN_DIR", &bin)
        .env("TASKBUS_QUICKSTART_DIR", work.path())
        .env_remove("TASKBUS_BUS")
        .env_remove("TASKBUS_QUICKSTART_NATS");
    let nats = nats_url();
    if let Some(url) = &nats {
        script.env("TASKBUS_QUICKSTART_NATS", url);
    }
    let out = crate::util::run(&mut script, None);
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(0), "quickstart/run.sh failed:\n{text}");

    assert!(
        out.stdout.contains("step 1: 5 of 5 tasks complete"),
        "{text}"
    );
    let done = std::fs::read_to_string(work.path().join("done.jsonl")).unwrap();
    assert_eq!(done.lines().count(), 5, "{done}");
    for line in done.lines() {
        let task = taskbus_bus::Task::from_json(line.as_bytes()).unwrap();
        assert!(
            task.msg.starts_with(&format!("hello, {}!", task.info)),
            "{line}"
        );
    }

    assert!(
        out.stdout.contains("step 2: 20 of 20 tasks complete"),
        "{text}"
    );
    let shares = shares(&out.stdout, "worker-");
    assert_eq!(shares.iter().sum::<usize>(), 20, "{text}");
    let tail_lines = out
        .stdout
        .lines()
        .filter(|l| l.contains(" complete ") && l.contains("(from worker-"));
    assert_eq!(
        tail_lines.count(),
        20,
        "taskbus tail printed every done task: {text}"
    );

    if nats.is_some() {
        assert!(out.stdout.contains("step 3: "), "{text}");
        assert!(!out.stdout.contains("step 3: skipped"), "{text}");
    } else {
        assert!(out.stdout.contains("step 3: skipped"), "{text}");
    }
}

/// The `  NAME did N` counts after step 2.
fn shares(stdout: &str, prefix: &str) -> Vec<usize> {
    let step2 = stdout.split("\nstep 2: ").nth(1).unwrap_or_default();
    step2
        .lines()
        .take_while(|l| !l.starts_with("=="))
        .filter_map(|l| l.trim().strip_prefix(prefix))
        .filter_map(|l| l.split(" did ").nth(1)?.trim().parse().ok())
        .collect()
}
