//! A measurement, not a test (ignored by default): the worker's loop — consume a task, publish its
//! done task and wait for the JetStream ack, then ack the input — over pre-filled streams, through
//! taskbus and through raw async-nats, in the same run, with file and memory storage. It prints
//! numbers and asserts only that every task went through.
//!
//! ```text
//! cargo test -p taskbus-bus --features nats --release --test nats_throughput -- --ignored --nocapture
//! ```
//!
//! `TASKBUS_BENCH_TASKS` (default 20000) tasks per run, `TASKBUS_BENCH_RUNS` (default 3) runs each,
//! `TASKBUS_BENCH_IN_FLIGHT` (default 64) tasks in flight.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod nats_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::StreamExt;
use nats_support::{base_url, connect, run_prefix, test_url, unique};
use taskbus_bus::{Bus, ConsumerOptions, Task, TaskResult};
use tokio::sync::Semaphore;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills a new topic with `n` tasks of about 250 bytes; returns the topic and how long it took.
async fn prefill(bus: &Bus, n: usize) -> (String, Duration) {
    let topic = unique("bench-in");
    let tasks: Vec<Task> = (0..n)
        .map(|i| {
            Task::new(
                "bench",
                format!("s3://bucket/path/to/input/file-{i:08}.csv?day=2024-01-02"),
            )
            .job("noop")
        })
        .collect();
    let started = Instant::now();
    bus.send_all(&topic, &tasks, 256).await.unwrap();
    (topic, started.elapsed())
}

/// The taskbus loop: a subscription, `in_flight` tasks at once, done task confirmed before each ack.
async fn taskbus_loop(bus: &Bus, topic: &str, n: usize, in_flight: usize) -> Duration {
    let done_topic = unique("bench-done");
    let started = Instant::now();
    let options = ConsumerOptions::group("bench").max_in_flight(in_flight);
    let mut sub = bus.subscribe_with(topic, options).await.unwrap();
    let permits = Arc::new(Semaphore::new(in_flight));
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let received = sub.next().await.unwrap().expect("a task");
        let (bus, done_topic) = (bus.clone(), done_topic.clone());
        handles.push(tokio::spawn(async move {
            let mut done = received.task.clone();
            done.start();
            done.end(TaskResult::Complete, "ok");
            bus.send(&done_topic, &done).await.unwrap();
            received.ack().await.unwrap();
            drop(permit);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    sub.close().await.unwrap();
    elapsed
}

/// The same loop on raw async-nats: a durable pull consumer's message stream, a JetStream publish
/// awaited before a plain (unconfirmed) ack, `in_flight` at once.
async fn raw_loop(bus: &Bus, url: &str, topic: &str, n: usize, in_flight: usize) -> Duration {
    let client = async_nats::connect(url.trim_start_matches("nats://").split('?').next().unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    // The bus makes the done stream with the same settings as the input's.
    let done_topic = unique("bench-raw-done");
    bus.send_raw(&done_topic, "{}").await.unwrap();
    let subject_prefix = run_prefix().trim_end_matches('-').replace('-', ".");
    let done_subject = format!("{subject_prefix}.{done_topic}");
    let stream = js
        .get_stream(format!("{}{topic}", run_prefix()))
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench-raw".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let messages = consumer
        .stream()
        .max_messages_per_batch(in_flight)
        .messages()
        .await
        .unwrap();
    let processed = messages
        .take(n)
        .map(|m| {
            let m = m.unwrap();
            let (js, done_subject) = (&js, &done_subject);
            async move {
                let mut done = Task::from_json(&m.payload).unwrap();
                done.start();
                done.end(TaskResult::Complete, "ok");
                let payload = done.to_json_bytes().into();
                js.publish(done_subject.clone(), payload)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                m.ack().await.unwrap();
            }
        })
        .buffer_unordered(in_flight)
        .count()
        .await;
    assert_eq!(processed, n);
    started.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it with --ignored --nocapture, in release mode"]
async fn pipeline_throughput_taskbus_and_raw_async_nats() {
    let n = env_number("TASKBUS_BENCH_TASKS", 20_000);
    let runs = env_number("TASKBUS_BENCH_RUNS", 3);
    let in_flight = env_number("TASKBUS_BENCH_IN_FLIGHT", 64);
    for storage in ["file", "memory"] {
        let url = test_url(&base_url(), &format!("storage={storage}&ack_wait=30s"));
        let bus = connect(&url).await;
        let (mut ours, mut raw, mut sends) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            let (topic, t) = prefill(&bus, n).await;
            sends.push(n as f64 / t.as_secs_f64());
            let t = taskbus_loop(&bus, &topic, n, in_flight).await;
            let rate = n as f64 / t.as_secs_f64();
            eprintln!("{storage} run {run}: taskbus  {n} tasks in {t:.2?}: {rate:.0} tasks/s");
            ours.push(rate);
            let (topic, _) = prefill(&bus, n).await;
            let t = raw_loop(&bus, &url, &topic, n, in_flight).await;
            let rate = n as f64 / t.as_secs_f64();
            eprintln!("{storage} run {run}: raw      {n} tasks in {t:.2?}: {rate:.0} tasks/s");
            raw.push(rate);
        }
        eprintln!(
            "{storage} storage, median of {runs}: taskbus {:.0} tasks/s, raw async-nats {:.0} tasks/s \
             ({in_flight} in flight, {n} tasks); Bus::send_all with 256 in flight {:.0} msgs/s",
            median(ours),
            median(raw),
            median(sends)
        );
        bus.close().await.unwrap();
    }
}
