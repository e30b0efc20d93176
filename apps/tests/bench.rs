//! `taskbus bench` through the real binary, at tiny sizes on the file and mem buses: the report has
//! every figure it should, labelled with its bus, N and C, and the run cleans up after itself.
//! Benchmarks report; nothing here asserts on a speed.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// How long one bench may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(300);

/// Runs `taskbus ARGS` with no configuration from the environment, killing it if it hangs.
fn taskbus(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskbus"));
    for var in [
        "TASKBUS_BUS",
        "TASKBUS_CONFIG",
        "TASKBUS_LOG",
        "RUST_LOG",
        "TASKBUS_TEST_NATS_URL",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(HANG).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `taskbus bench ARGS`, writing its report into `dir/out`; returns the JSON report (null when
/// none was written) and the markdown.
fn bench(dir: &Path, args: &[&str]) -> (Output, Value, String) {
    let (json, md) = (dir.join("out/bench.json"), dir.join("out/bench.md"));
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
    ]);
    let out = taskbus(&all);
    let report = std::fs::read_to_string(&json)
        .map(|j| serde_json::from_str(&j).unwrap())
        .unwrap_or(Value::Null);
    let markdown = std::fs::read_to_string(&md).unwrap_or_default();
    (out, report, markdown)
}

/// A tiny run on `buses`, with the file bus in `dir`.
fn tiny_bench(dir: &Path, buses: &str) -> (Output, Value, String) {
    let bus_dir = dir.join("buses");
    std::fs::create_dir_all(&bus_dir).unwrap();
    bench(
        dir,
        &[
            "--buses",
            buses,
            "--concurrency",
            "1,4",
            "--tasks",
            "200",
            "--per-slot",
            "100",
            "--growth",
            "200,400",
            "--growth-concurrency",
            "4",
            "--latency-tasks",
            "20",
            "--latency-rate",
            "200",
            "--memory-in-flight",
            "20",
            "--dir",
            bus_dir.to_str().unwrap(),
        ],
    )
}

fn rows<'a>(report: &'a Value, key: &str, bus: &str) -> Vec<&'a Value> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {report:#}"))
        .iter()
        .filter(|r| r["bus"] == bus)
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn a_tiny_bench_on_file_and_mem_reports_every_point_with_bus_n_and_c() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report, markdown) = tiny_bench(dir.path(), "file,mem");
    assert!(
        out.status.success(),
        "the bench failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(report["failures"], Value::Array(vec![]), "{report:#}");

    // The matrix (N = min(200, 100 × C)) then the growth sizes not in it, at C = 4.
    let points = [(100, 1), (200, 4), (400, 4)];
    for bus in ["file", "mem"] {
        let throughput = rows(&report, "throughput", bus);
        for (n, c) in points {
            for client in ["taskbus", "raw"] {
                let row = throughput.iter().find(|r| {
                    (r["n"] == n, r["c"] == c, r["client"] == client) == (true, true, true)
                });
                if bus == "mem" && client == "raw" {
                    assert!(row.is_none(), "the mem bus has no raw client: {row:?}");
                    continue;
                }
                let row =
                    row.unwrap_or_else(|| panic!("no {bus} {client} N={n} C={c}: {report:#}"));
                assert!(num(&row["tasks_per_sec"]) > 0.0, "{row}");
                assert!(num(&row["fill_tasks_per_sec"]) > 0.0, "{row}");
                assert_eq!(row["runs"].as_array().unwrap().len(), 1, "{row}");
                assert_eq!(row["duplicates"], 0, "{row}");
                assert!(num(&row["client_cpu_us"]) >= 0.0, "{row}");
                assert!(row["broker_cpu_us"].is_null(), "no broker here: {row}");
            }
        }
        assert_eq!(throughput.len(), if bus == "mem" { 3 } else { 6 });

        let latency = rows(&report, "latency", bus);
        assert_eq!(latency.len(), 1, "{report:#}");
        let l = latency[0];
        assert_eq!((l["n"].as_u64(), l["c"].as_u64()), (Some(20), Some(16)));
        let (p50, p99, max) = (num(&l["p50_ms"]), num(&l["p99_ms"]), num(&l["max_ms"]));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{l}");
    }

    // The memory of a worker process: only where a process can share the bus.
    assert!(rows(&report, "memory", "mem").is_empty());
    let memory = rows(&report, "memory", "file");
    let phases: Vec<(String, u64, u64)> = memory
        .iter()
        .map(|m| {
            assert!(
                num(&m["rss_kib"]) > 0.0 && num(&m["peak_kib"]) >= num(&m["rss_kib"]),
                "{m}"
            );
            (
                m["phase"].as_str().unwrap().to_owned(),
                m["n"].as_u64().unwrap(),
                m["c"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("idle", 1, 4),
        ("drained", 200, 4),
        ("drained", 400, 4),
        ("in_flight", 2, 20),
        ("in_flight", 20, 20),
    ];
    let want: Vec<(String, u64, u64)> = want
        .iter()
        .map(|(p, n, c)| ((*p).to_owned(), *n, *c))
        .collect();
    assert_eq!(phases, want);
    let per = rows(&report, "memory_per_in_flight", "file");
    assert_eq!(per.len(), 1);
    assert_eq!(
        (per[0]["from_n"].as_u64(), per[0]["to_n"].as_u64()),
        (Some(2), Some(20))
    );

    // The markdown: printed and written, one labelled row per point.
    assert_eq!(text(&out.stdout).trim_end(), markdown.trim_end());
    for needle in [
        "## Throughput",
        "| file | 100 | 1 |",
        "| file | 400 | 4 |",
        "| mem | 200 | 4 |",
        "Slowest against its raw client: **file",
        "## CPU per task",
        "| taskbus client | taskbus broker | raw client | raw broker |",
        "## Latency",
        "## Memory of a worker process",
        "| file | idle | 1 | 4 |",
        "bytes per in-flight task",
        "load average at start",
    ] {
        assert!(markdown.contains(needle), "no {needle:?} in\n{markdown}");
    }

    // Nothing of the run is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("buses"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn bad_flags_are_usage_errors_with_one_line() {
    for args in [
        &["bench", "--buses", "redis"][..],
        &["bench", "--limit", "nats"],
        &["bench", "--limit", "redis=1M"],
        &["bench", "--tasks", "0"],
        &["bench", "--growth", "ten"],
        &["bench", "--concurrency", "0"],
        &["bench", "--runs", "0"],
    ] {
        let out = taskbus(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

#[cfg(feature = "nats")]
#[test]
fn an_unreachable_broker_is_a_failure_in_the_report_and_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report, _) = bench(
        dir.path(),
        &["--buses", "nats", "--nats-url", "nats://127.0.0.1:1"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report:#}");
    assert_eq!(failures[0]["what"], "connect");
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("scripts/brokers/nats.sh"),
        "{report:#}"
    );
    assert!(report["throughput"].as_array().unwrap().is_empty());
}

/// On a broker, both loops run and the broker's CPU time is read (NATS, started by the test script).
#[cfg(feature = "nats")]
#[test]
fn a_tiny_bench_on_nats_reads_the_broker_cpu_beside_the_raw_client() {
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("TASKBUS_TEST_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    let (out, report, _) = bench(
        dir.path(),
        &[
            "--buses",
            "nats",
            "--nats-url",
            &url,
            "--concurrency",
            "4",
            "--tasks",
            "200",
            "--skip",
            "growth,latency,memory",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let throughput = rows(&report, "throughput", "nats");
    assert_eq!(throughput.len(), 2, "taskbus and raw: {report:#}");
    for row in throughput {
        assert_eq!((row["n"].as_u64(), row["c"].as_u64()), (Some(200), Some(4)));
        assert!(num(&row["tasks_per_sec"]) > 0.0, "{row}");
        if url.contains("127.0.0.1") || url.contains("localhost") {
            assert!(
                num(&row["broker_cpu_us"]) >= 0.0,
                "nats-server runs here: {row}"
            );
        }
    }
}
