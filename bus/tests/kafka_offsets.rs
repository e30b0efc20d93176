//! Kafka commits one offset per partition. These tests watch the committed offset itself: a slow
//! task at a low offset holds it back while later tasks finish, and after the worker holding it is
//! killed, the group resumes from it.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_support::{base_url, committed, connect, test_url, unique, LEASE};
use taskbus_bus::Task;

/// Set in the child process: `URL|TOPIC|GROUP`.
const CHILD: &str = "TASKBUS_KAFKA_SLOW_WORKER";

/// The worker of the test below, run as a process of its own so it can be killed: receives the ten
/// tasks, holds the first, acks the other nine, says which it holds, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by slow_task_holds_the_committed_offset_and_a_restart_resumes_from_it"]
async fn slow_worker_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.split('|');
    let (url, topic, group) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let bus = connect(url).await;
    let mut sub = bus.subscribe(topic, group).await.unwrap();
    let mut held = None;
    for _ in 0..10 {
        let r = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("ten tasks within a minute")
            .unwrap()
            .expect("a task");
        if r.task.info == "#0" {
            held = Some(r);
        } else {
            r.ack().await.unwrap();
        }
    }
    let held = held.expect("task #0");
    println!("HELD {}", held.task.id);
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_task_holds_the_committed_offset_and_a_restart_resumes_from_it() {
    // One partition, so the offsets are the order of the sends; quick commits.
    let url = test_url(&base_url(), "partitions=1&commit_interval=100ms");
    let (topic, group) = (unique("slow"), unique("g"));
    let group_id = format!("{group}.{topic}");
    let bus = connect(&url).await;
    let tasks: Vec<Task> = (0..10)
        .map(|i| Task::new("slow", format!("#{i}")))
        .collect();
    for task in &tasks {
        bus.send(&topic, task).await.unwrap();
    }

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "slow_worker_process", "--ignored", "--nocapture"])
        .env(CHILD, format!("{url}|{topic}|{group}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let held = loop {
        let line = lines
            .next()
            .expect("the worker says which task it holds")
            .unwrap();
        if let Some(id) = line.strip_prefix("HELD ") {
            break id.to_owned();
        }
    };
    assert_eq!(held, tasks[0].id);

    // Nine of ten done, the first still running: many commit intervals later, the group's
    // committed offset is still 0, the slow task's.
    let watch = Instant::now();
    let mut seen = Vec::new();
    while watch.elapsed() < Duration::from_secs(3) {
        let offset = tokio::task::spawn_blocking({
            let (url, group_id, topic) = (url.clone(), group_id.clone(), topic.clone());
            move || committed(&url, &group_id, &topic, 0)
        })
        .await
        .unwrap();
        assert!(
            offset.map_or(true, |o| o == 0),
            "the committed offset went to {offset:?} past the unfinished task at offset 0"
        );
        seen.push(offset);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seen.last().copied().flatten(),
        Some(0),
        "offsets seen: {seen:?}"
    );

    // The worker dies without a word. After its session times out, the next member of the group
    // resumes from the committed offset: the slow task first, then the nine above it again.
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let mut sub = bus.subscribe(&topic, &group).await.unwrap();
    let mut got = Vec::new();
    while got.len() < tasks.len() {
        let r = tokio::time::timeout(LEASE * 4 + Duration::from_secs(10), sub.next())
            .await
            .expect("the tasks after the restart")
            .unwrap()
            .expect("a task");
        if got.is_empty() {
            eprintln!("first task {:?} after the kill", killed.elapsed());
        }
        got.push((r.task.info.clone(), r.delivery_count()));
        r.ack().await.unwrap();
    }
    let expected: Vec<(String, u32)> = (0..10).map(|i| (format!("#{i}"), 1)).collect();
    assert_eq!(
        got, expected,
        "the restarted group resumes at the slow task's offset and goes on in order (a crash does \
         not count as a delivery)"
    );
    sub.close().await.unwrap();
    drop(sub);
    bus.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let offset = committed(&url, &group_id, &topic, 0);
        if offset == Some(10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "everything acked, yet the committed offset is {offset:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
