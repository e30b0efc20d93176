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
//! `TASKBUS_BENCH_IN_FLIGHT` (default 64) tasks in flight, `TASKBUS_BENCH_STORAGE` (default
//! `file,memory`) the storages to measure.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod nats_support;

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use nats_support::{base_url, connect, run_prefix, test_url, unique};
use taskbus_bus::{Bus, ConsumerOptions, Task, TaskResult};

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

/// The taskbus loop: a subscription, `in_flight` tasks at once, each done task confirmed before
/// its input is acked. The same shape as the raw loop below.
async fn taskbus_loop(bus: &Bus, topic: &str, n: usize, in_flight: usize) -> Duration {
    let done_topic = unique("bench-done");
    let started = Instant::now();
    let options = ConsumerOptions::group("bench").max_in_flight(in_flight);
    let sub = bus.subscribe_with(topic, options).await.unwrap();
    let received = futures::stream::unfold(sub, |mut sub| async move {
        let next = sub.next().await.unwrap().expect("a task");
        Some((next, sub))
    });
    let processed = received
        .take(n)
        .map(|received| {
            let (bus, done_topic) = (bus, &done_topic);
            async move {
                let (mut done, delivery) = received.into_parts();
                done.start();
                done.end(TaskResult::Complete, "ok");
                bus.send(done_topic, &done).await.unwrap();
                delivery.ack().await.unwrap();
            }
        })
        .buffer_unordered(in_flight)
        .count()
        .await;
    assert_eq!(processed, n);
    started.elapsed()
}

/// The same loop on raw async-nats: a durable pull consumer's message stream, a JetStream publish
/// awaited before a plain (unconfirmed) ack, `in_flight` at once. With `msg_id`, each done task
/// carries the `Nats-Msg-Id` header taskbus sends, to show what JetStream's de-duplication costs.
async fn raw_loop(
    bus: &Bus,
    url: &str,
    topic: &str,
    (n, in_flight): (usize, usize),
    msg_id: bool,
) -> Duration {
    let client = nats_support::raw_client(url).await.unwrap();
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
                let mut publish = PublishMessage::build().payload(done.to_json_bytes().into());
                if msg_id {
                    publish = publish.message_id(done.dedup_key().unwrap());
                }
                js.send_publish(done_subject.clone(), publish)
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

/// CPU time (user + system) used so far by the processes `pids`, from /proc, in seconds.
fn cpu_seconds(pids: &[String]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            Some(fields.iter().sum::<u64>())
        })
        .sum();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

/// The pids of the nats-server processes on this machine.
fn nats_server_pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "nats-server")
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f`, returning its wall time and the CPU seconds this process and nats-server spent.
async fn measured<F: std::future::Future<Output = Duration>>(f: F) -> (Duration, f64, f64) {
    let (me, server) = (vec!["self".to_owned()], nats_server_pids());
    let (me0, server0) = (cpu_seconds(&me), cpu_seconds(&server));
    let wall = f.await;
    (wall, cpu_seconds(&me) - me0, cpu_seconds(&server) - server0)
}

/// The measurements of one loop over the runs.
struct Series {
    name: &'static str,
    rates: Vec<f64>,
    cpus: Vec<f64>,
}

impl Series {
    fn new(name: &'static str) -> Self {
        Series {
            name,
            rates: Vec::new(),
            cpus: Vec::new(),
        }
    }

    fn record(
        &mut self,
        storage: &str,
        run: usize,
        n: usize,
        (wall, me, server): (Duration, f64, f64),
    ) {
        let rate = n as f64 / wall.as_secs_f64();
        let per_task = (me + server) / n as f64 * 1e6;
        eprintln!(
            "{storage} run {run}: {:16} {n} tasks in {wall:.2?}: {rate:.0} tasks/s; CPU {me:.2}s \
             client + {server:.2}s nats-server = {per_task:.1} µs/task",
            self.name
        );
        self.rates.push(rate);
        self.cpus.push(per_task);
    }

    fn summary(&self) -> String {
        format!(
            "{} {:.0} tasks/s, {:.1} µs CPU/task",
            self.name,
            median(self.rates.clone()),
            median(self.cpus.clone())
        )
    }
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
    let storages = std::env::var("TASKBUS_BENCH_STORAGE").unwrap_or_else(|_| "file,memory".into());
    for storage in storages.split(',') {
        let url = test_url(&base_url(), &format!("storage={storage}&ack_wait=30s"));
        let bus = connect(&url).await;
        let mut sends = Vec::new();
        let mut ours = Series::new("taskbus");
        let mut raw = Series::new("raw async-nats");
        let mut raw_id = Series::new("raw + Nats-Msg-Id");
        for run in 1..=runs {
            let (topic, t) = prefill(&bus, n).await;
            sends.push(n as f64 / t.as_secs_f64());
            let m = measured(taskbus_loop(&bus, &topic, n, in_flight)).await;
            ours.record(storage, run, n, m);
            let (topic, _) = prefill(&bus, n).await;
            let m = measured(raw_loop(&bus, &url, &topic, (n, in_flight), false)).await;
            raw.record(storage, run, n, m);
            let (topic, _) = prefill(&bus, n).await;
            let m = measured(raw_loop(&bus, &url, &topic, (n, in_flight), true)).await;
            raw_id.record(storage, run, n, m);
        }
        eprintln!(
            "{storage} storage, median of {runs} ({in_flight} in flight, {n} tasks; CPU is client + \
             nats-server): {}; {}; {}; Bus::send_all with 256 in flight {:.0} msgs/s",
            ours.summary(),
            raw.summary(),
            raw_id.summary(),
            median(sends)
        );
        bus.close().await.unwrap();
    }
}
