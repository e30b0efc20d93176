//! A measurement, not a test (ignored by default): the worker's loop — consume a task, publish its
//! done task and wait for RabbitMQ's confirm, then ack the input — with 64 tasks in flight, draining
//! pre-filled durable queues of persistent tasks, through taskbus and through raw lapin, in the same
//! run. It prints numbers and asserts only that every task went through.
//!
//! ```text
//! cargo test -p taskbus-bus --features amqp --release --test amqp_throughput -- --ignored --nocapture
//! ```
//!
//! `TASKBUS_BENCH_TASKS` (default 20000) tasks per run, `TASKBUS_BENCH_RUNS` (default 3) runs each,
//! `TASKBUS_BENCH_IN_FLIGHT` (default 64) tasks in flight, `TASKBUS_BENCH_DONE_GROUP` (set: a group
//! reads the done topic, so done tasks route to its queue rather than to the topic's backlog), `TASKBUS_BENCH_QUEUE` (default `classic`;
//! or `quorum`) the queue type of both loops.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

mod amqp_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_support::{base_url, connect, unique};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use taskbus_bus::{Bus, ConsumerOptions, Task, TaskResult};
use tokio::sync::Semaphore;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` tasks of about 250 bytes.
fn tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| {
            Task::new(
                "bench",
                format!("s3://bucket/path/to/input/file-{i:08}.csv?day=2024-01-02"),
            )
            .job("noop")
        })
        .collect()
}

/// The taskbus loop: a subscription, `in_flight` tasks at once, each done task confirmed before its
/// input is acked. The group exists before the topic is filled.
async fn taskbus_loop(bus: &Bus, n: usize, in_flight: usize) -> (Duration, Vec<String>) {
    let (topic, group, done_topic) = (unique("bench-in"), unique("bench"), unique("bench-done"));
    let options = ConsumerOptions::group(&group).max_in_flight(in_flight);
    let mut sub = bus.subscribe_with(&topic, options.clone()).await.unwrap();
    sub.close().await.unwrap();
    drop(sub);
    let mut queues = vec![
        format!("taskbus:{topic}:{group}"),
        format!("taskbus:{topic}:(backlog)"),
        format!("taskbus:{done_topic}:(backlog)"),
    ];
    if std::env::var("TASKBUS_BENCH_DONE_GROUP").is_ok() {
        // A group reads the done topic, as a taskmaster would: done tasks route straight to it.
        let done_group = unique("bench-done-readers");
        let mut done_sub = bus.subscribe(&done_topic, &done_group).await.unwrap();
        done_sub.close().await.unwrap();
        queues.push(format!("taskbus:{done_topic}:{done_group}"));
    }
    bus.send_all(&topic, &tasks(n), 1024).await.unwrap();

    let started = Instant::now();
    let cpu = CpuMeter::start();
    let mut sub = bus.subscribe_with(&topic, options).await.unwrap();
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
    eprintln!("  taskbus {}", cpu.per_task(n));
    sub.close().await.unwrap();
    (elapsed, queues)
}

async fn raw_connection() -> Connection {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(&base_url(), properties).await.unwrap()
}

/// The queues of the raw loop: classic version 2 (as the bus declares them), classic version 1
/// (RabbitMQ 3.10's default), or quorum.
fn raw_queue_arguments(kind: &str) -> FieldTable {
    let mut args = FieldTable::default();
    match kind {
        "classic-v1" => {}
        "classic" => args.insert("x-queue-version".into(), AMQPValue::LongLongInt(2)),
        "quorum" => args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        ),
        other => panic!("unknown queue kind {other:?}: use classic, classic-v1 or quorum"),
    }
    args
}

async fn durable_queue(ch: &Channel, name: &str, kind: &str) {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name, options, raw_queue_arguments(kind))
        .await
        .unwrap();
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// The same loop on raw lapin, as a hand-written worker does it: one connection, prefetch
/// `in_flight`, each task parsed, its done task published and its confirm awaited, then the input
/// acked on its own.
async fn raw_loop(n: usize, in_flight: usize, kind: &str) -> (Duration, Vec<String>) {
    let (input, output) = (unique("bench-raw-in"), unique("bench-raw-done"));
    let connection = raw_connection().await;
    let ch = connection.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    durable_queue(&ch, &input, kind).await;
    durable_queue(&ch, &output, kind).await;
    let fill = futures::stream::iter(tasks(n))
        .map(|task| {
            let (ch, input) = (&ch, &input);
            async move {
                let payload = task.to_json_bytes();
                let confirm = ch
                    .basic_publish(
                        "",
                        input,
                        BasicPublishOptions::default(),
                        &payload,
                        persistent(),
                    )
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
            }
        })
        .buffer_unordered(1024)
        .count();
    fill.await;

    let started = Instant::now();
    let cpu = CpuMeter::start();
    let consume = connection.create_channel().await.unwrap();
    consume
        .basic_qos(
            u16::try_from(in_flight).unwrap(),
            BasicQosOptions::default(),
        )
        .await
        .unwrap();
    let deliveries = consume
        .basic_consume(
            &input,
            "raw",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let processed = deliveries
        .take(n)
        .map(|delivery| {
            let (ch, output) = (&ch, &output);
            async move {
                let delivery = delivery.unwrap();
                let mut done = Task::from_json(&delivery.data).unwrap();
                done.start();
                done.end(TaskResult::Complete, "ok");
                let payload = done.to_json_bytes();
                let confirm = ch
                    .basic_publish(
                        "",
                        output,
                        BasicPublishOptions::default(),
                        &payload,
                        persistent(),
                    )
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
                delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
        })
        .buffer_unordered(in_flight)
        .count()
        .await;
    assert_eq!(processed, n);
    let elapsed = started.elapsed();
    eprintln!("  raw     {}", cpu.per_task(n));
    connection.close(200, "done").await.unwrap();
    (elapsed, vec![input, output])
}

/// Deletes the queues a run filled, so the broker's disk does not fill up run after run.
async fn delete_queues(queues: &[String]) {
    let connection = raw_connection().await;
    let ch = connection.create_channel().await.unwrap();
    for queue in queues {
        ch.queue_delete(queue, QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    connection.close(200, "done").await.unwrap();
}

/// CPU seconds (user + system) used so far by process `pid`, from `/proc` (Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The pid of the local RabbitMQ (`beam.smp`), if it runs on this machine.
fn rabbitmq_pid() -> Option<String> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then(|| entry.file_name().to_string_lossy().into_owned())
        })
}

/// CPU time of this process and of RabbitMQ between two points.
struct CpuMeter {
    broker: Option<String>,
    start: (f64, f64),
}

impl CpuMeter {
    fn start() -> CpuMeter {
        let broker = rabbitmq_pid();
        let start = Self::now(broker.as_deref());
        CpuMeter { broker, start }
    }

    fn now(broker: Option<&str>) -> (f64, f64) {
        let ours = cpu_seconds("self").unwrap_or(0.0);
        (ours, broker.and_then(cpu_seconds).unwrap_or(0.0))
    }

    /// "client X µs + broker Y µs per task".
    fn per_task(&self, n: usize) -> String {
        let (ours, broker) = Self::now(self.broker.as_deref());
        let us = |s: f64| s * 1e6 / n as f64;
        format!(
            "CPU per task: client {:.0} µs + RabbitMQ {:.0} µs",
            us(ours - self.start.0),
            us(broker - self.start.1)
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it with --ignored --nocapture, in release mode"]
async fn pipeline_throughput_taskbus_and_raw_lapin() {
    let n = env_number("TASKBUS_BENCH_TASKS", 20_000);
    let runs = env_number("TASKBUS_BENCH_RUNS", 3);
    let in_flight = env_number("TASKBUS_BENCH_IN_FLIGHT", 64);
    let kind = std::env::var("TASKBUS_BENCH_QUEUE").unwrap_or_else(|_| "classic".to_owned());
    let bus = connect(&format!("queue_type={kind}")).await;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let (t, queues) = taskbus_loop(&bus, n, in_flight).await;
        delete_queues(&queues).await;
        let rate = n as f64 / t.as_secs_f64();
        eprintln!("run {run}: taskbus   {n} tasks in {t:.2?}: {rate:.0} tasks/s");
        ours.push(rate);
        let (t, queues) = raw_loop(n, in_flight, &kind).await;
        delete_queues(&queues).await;
        let rate = n as f64 / t.as_secs_f64();
        eprintln!("run {run}: raw lapin {n} tasks in {t:.2?}: {rate:.0} tasks/s");
        raw.push(rate);
    }
    eprintln!(
        "median of {runs}: taskbus {:.0} tasks/s, raw lapin {:.0} tasks/s ({in_flight} in flight, \
         {n} durable tasks, {kind} queues)",
        median(ours),
        median(raw)
    );
    bus.close().await.unwrap();
}

/// The raw loop alone on each queue type RabbitMQ 3.10 offers, to see what the broker can do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it with --ignored --nocapture, in release mode"]
async fn raw_lapin_by_queue_type() {
    let n = env_number("TASKBUS_BENCH_TASKS", 20_000);
    let in_flight = env_number("TASKBUS_BENCH_IN_FLIGHT", 64);
    for kind in ["classic-v1", "classic", "quorum"] {
        let (t, queues) = raw_loop(n, in_flight, kind).await;
        delete_queues(&queues).await;
        let rate = n as f64 / t.as_secs_f64();
        eprintln!("raw lapin, {kind} queues: {n} tasks in {t:.2?}: {rate:.0} tasks/s");
    }
}
