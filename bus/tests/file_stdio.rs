//! `stdio:` in a real process: tasks in on stdin, done tasks out on stdout, a clean end at EOF. The
//! test binary runs itself again with `FILE_TEST_ROLE=stdio-worker` to be that process.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskbus_bus::{Bus, DeadLetter, Task, TaskResult};

const ROLE: &str = "FILE_TEST_ROLE";

/// The worker: every task from stdin is ended and sent to `done` (stdout); a task whose info is
/// `nack-once` is nacked the first time, with a delay, to show redelivery within the process.
async fn stdio_worker() {
    let bus = Bus::connect("stdio:").await.expect("stdio: connects");
    let mut sub = bus.subscribe("tasks", "workers").await.expect("subscribe");
    while let Some(received) = sub.next().await.expect("next") {
        if received.task.info == "nack-once" && received.delivery_count() == 1 {
            received
                .nack(Some(Duration::from_millis(50)))
                .await
                .expect("nack");
            continue;
        }
        let mut done = received.task.clone();
        done.start();
        done.end(
            TaskResult::Complete,
            format!("delivery {}", received.delivery_count()),
        );
        bus.send("done", &done).await.expect("send to stdout");
        received.ack().await.expect("ack");
    }
    eprintln!("stdio worker: end of input");
}

fn run_worker(input: Vec<u8>) -> (String, String, std::process::ExitStatus) {
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args([
            "stdin_to_stdout_ends_cleanly_at_eof",
            "--exact",
            "--nocapture",
            "--quiet",
        ])
        .env(ROLE, "stdio-worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the worker process");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).expect("write the tasks");
        // Dropping stdin closes it: end of input.
    });
    let mut stdout = String::new();
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        out.read_to_string(&mut stdout).expect("read stdout");
        stdout
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the stdio worker did not end at end of input (the pcelvng quickstart hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().expect("writer");
    let stdout = reader.join().expect("reader");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (stdout, stderr, status)
}

#[test]
fn stdin_to_stdout_ends_cleanly_at_eof() {
    if std::env::var(ROLE).as_deref() == Ok("stdio-worker") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(stdio_worker());
        std::process::exit(0);
    }
    let huge = Task::new("big", "x".repeat(300 * 1024)); // far over pcelvng's 64 KiB line limit
    let small: Vec<_> = (0..50)
        .map(|i| Task::new("small", format!("{i}")))
        .collect();
    let nacked = Task::new("small", "nack-once");
    let mut input = String::new();
    for t in &small[..25] {
        input.push_str(&format!("{}\n", t.to_json()));
    }
    input.push_str(&format!("{}\r\n\n", huge.to_json()));
    input.push_str("definitely not a task\n");
    input.push_str(&format!("{}\n", nacked.to_json()));
    for t in &small[25..] {
        input.push_str(&format!("{}\n", t.to_json()));
    }
    input.pop(); // the last line without its newline: still a task at end of input

    let (stdout, stderr, status) = run_worker(input.into_bytes());
    assert!(status.success(), "the worker failed: {status}\n{stderr}");
    assert!(stderr.contains("stdio worker: end of input"), "{stderr}");
    let mut done = Vec::new();
    let mut letters = Vec::new();
    // The test harness of the child prints a header of its own on stdout; tasks are JSON objects.
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        match Task::from_json(line.as_bytes()) {
            Ok(task) => done.push(task),
            Err(_) => letters.push(DeadLetter::from_json(line.as_bytes()).expect("a dead letter")),
        }
    }
    let mut want: Vec<_> = small
        .iter()
        .chain([&huge, &nacked])
        .map(|t| t.id.clone())
        .collect();
    let mut got: Vec<_> = done.iter().map(|t| t.id.clone()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every task done exactly once");
    assert!(done.iter().all(|t| t.result == Some(TaskResult::Complete)));
    let big = done.iter().find(|t| t.id == huge.id).expect("the big task");
    assert_eq!(big.info.len(), 300 * 1024);
    let renacked = done
        .iter()
        .find(|t| t.id == nacked.id)
        .expect("the nacked task");
    assert_eq!(renacked.msg, "delivery 2");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].payload, "definitely not a task");
}
