//! A measurement, not a test (ignored by default): the worker's loop — consume a task, publish its
//! done task and wait for the delivery report, then ack the input — with 64 tasks in flight, over
//! pre-filled topics, through taskbus and through raw rdkafka, in the same run. It prints numbers and
//! asserts only that every task went through.
//!
//! ```text
//! cargo test -p taskbus-bus --features kafka --release --test kafka_throughput -- --ignored --nocapture
//! ```
//!
//! `TASKBUS_BENCH_TASKS` (default 20000) tasks per run, `TASKBUS_BENCH_RUNS` (default 3) runs each.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kafka_support::{base_url, batched_url, bootstrap, connect, unique};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use taskbus_bus::{Bus, ConsumerOptions, Task, TaskResult};
use tokio::sync::Semaphore;

const IN_FLIGHT: usize = 64;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills a new topic with `n` tasks of about 250 bytes.
async fn prefill(bus: &Bus, n: usize) -> String {
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
    bus.send_all(&topic, &tasks, 1024).await.unwrap();
    topic
}

/// The taskbus loop: a subscription, 64 tasks at once, done task confirmed before each ack.
async fn taskbus_loop(bus: &Bus, topic: &str, n: usize) -> Duration {
    let done_topic = unique("bench-done");
    let started = Instant::now();
    let options = ConsumerOptions::group(unique("bench")).max_in_flight(IN_FLIGHT);
    let mut sub = bus.subscribe_with(topic, options).await.unwrap();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
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

/// The same loop on raw rdkafka: a stream consumer storing offsets as messages finish (in any
/// order, as a hand-written loop does), a future producer.
async fn raw_loop(url: &str, topic: &str, n: usize) -> Duration {
    let servers = bootstrap(url);
    let done_topic = unique("bench-raw-done");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // tansu does not auto-create topics: let the bus create the done topic.
    let bus = connect(url).await;
    bus.send_raw(&done_topic, "{}").await.unwrap();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", unique("bench-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let started = Instant::now();
    let processed = consumer
        .stream()
        .take(n)
        .map(|m| {
            let m = m.unwrap().detach();
            let (producer, consumer, done_topic) = (&producer, &consumer, &done_topic);
            async move {
                let mut done = Task::from_json(m.payload().unwrap()).unwrap();
                done.start();
                done.end(TaskResult::Complete, "ok");
                let payload = done.to_json_bytes();
                let record = FutureRecord::to(done_topic)
                    .payload(&payload)
                    .key(done.id.as_bytes());
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .unwrap();
                consumer
                    .store_offset(m.topic(), m.partition(), m.offset() + 1)
                    .unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
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
async fn pipeline_throughput_taskbus_and_raw_rdkafka() {
    let n = env_number("TASKBUS_BENCH_TASKS", 20_000);
    let runs = env_number("TASKBUS_BENCH_RUNS", 3);
    let url = batched_url(&base_url(), "");
    let bus = connect(&url).await;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let topic = prefill(&bus, n).await;
        let t = taskbus_loop(&bus, &topic, n).await;
        let rate = n as f64 / t.as_secs_f64();
        eprintln!("run {run}: taskbus  {n} tasks in {t:.2?}: {rate:.0} tasks/s");
        ours.push(rate);
        let topic = prefill(&bus, n).await;
        let t = raw_loop(&url, &topic, n).await;
        let rate = n as f64 / t.as_secs_f64();
        eprintln!("run {run}: raw      {n} tasks in {t:.2?}: {rate:.0} tasks/s");
        raw.push(rate);
    }
    eprintln!(
        "median of {runs}: taskbus {:.0} tasks/s, raw rdkafka {:.0} tasks/s ({IN_FLIGHT} in flight, \
         {n} tasks)",
        median(ours),
        median(raw)
    );
    bus.close().await.unwrap();
}
