//! The cron and retry services on the in-process bus, driven by a manual clock: hours of schedule
//! and retry delays pass in milliseconds.

#![allow(clippy::unwrap_used)]

mod util;

use std::sync::Arc;
use std::time::Duration;

use taskbus_bus::{Task, TaskResult};
use taskbus_taskmaster::clock::ManualClock;
use taskbus_taskmaster::config::ConfigFile;
use taskbus_taskmaster::cron::ledger::MemoryLedger;
use taskbus_taskmaster::cron::{self, CronService};
use taskbus_taskmaster::retry::{self, RetryOptions, RetryService};
use tokio_util::sync::CancellationToken;
use util::{bus, next, nothing, settle, utc, watch};

const HOURLY: &str = r#"
[[rule]]
name = "hourly"
cron = "0 * * * *"
type = "report"
topic = "reports"
template = "day={yyyy}-{mm}-{dd}T{hh}"
offset = "-1h"
"#;

fn rules(text: &str) -> Vec<cron::Rule> {
    cron::config::parse(&ConfigFile::new("cron.toml", text)).unwrap()
}

#[tokio::test]
async fn two_cron_replicas_send_each_tick_once() {
    let bus = bus("cron-replicas").await;
    let mut reports = watch(&bus, "reports").await;
    let clock = ManualClock::new(utc("2024-01-02T09:30:00Z"));
    let ledger = Arc::new(MemoryLedger::new());
    let stop = CancellationToken::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let service = CronService::new(
            bus.clone(),
            rules(HOURLY),
            ledger.clone(),
            Arc::new(clock.clone()),
        );
        handles.push(tokio::spawn(service.run(stop.clone())));
    }
    settle().await;
    for hour in 10..14 {
        clock.set(utc(&format!("2024-01-02T{hour}:00:00Z")));
        settle().await;
        let task = next(&mut reports).await;
        assert_eq!(task.info, format!("day=2024-01-02T{:02}", hour - 1));
        assert_eq!(
            task.meta.get("scheduled"),
            Some(format!("2024-01-02T{hour}:00:00Z").as_str())
        );
        nothing(&mut reports, 100).await;
    }
    stop.cancel();
    for h in handles {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_restarted_cron_catches_up_by_policy() {
    let bus = bus("cron-restart").await;
    let mut reports = watch(&bus, "reports").await;
    let clock = ManualClock::new(utc("2024-01-02T09:30:00Z"));
    let ledger = Arc::new(MemoryLedger::new());
    let text = format!("{HOURLY}catch_up = \"all\"\ncatch_up_window = \"2h30m\"\n");

    let stop = CancellationToken::new();
    let service = CronService::new(
        bus.clone(),
        rules(&text),
        ledger.clone(),
        Arc::new(clock.clone()),
    );
    let handle = tokio::spawn(service.run(stop.clone()));
    settle().await;
    clock.set(utc("2024-01-02T10:00:00Z"));
    assert_eq!(next(&mut reports).await.info, "day=2024-01-02T09");
    stop.cancel();
    handle.await.unwrap().unwrap();

    // Down from 10:00 to 14:20: ticks 11, 12, 13 and 14 missed; the window (2h30m) keeps 12, 13, 14.
    clock.set(utc("2024-01-02T14:20:00Z"));
    let stop = CancellationToken::new();
    let service = CronService::new(
        bus.clone(),
        rules(&text),
        ledger.clone(),
        Arc::new(clock.clone()),
    );
    let handle = tokio::spawn(service.run(stop.clone()));
    for hour in [11, 12, 13] {
        assert_eq!(
            next(&mut reports).await.info,
            format!("day=2024-01-02T{hour}")
        );
    }
    nothing(&mut reports, 100).await;
    clock.set(utc("2024-01-02T15:00:00Z"));
    assert_eq!(next(&mut reports).await.info, "day=2024-01-02T14");
    stop.cancel();
    handle.await.unwrap().unwrap();
}

const RETRY: &str = r#"
[[rule]]
type = "flaky"
retries = 2
delay = "10m"
backoff = "exponential"
"#;

fn retry_config() -> retry::RetryConfig {
    retry::config::parse(&ConfigFile::new("retry.toml", RETRY)).unwrap()
}

/// A retry service on the manual clock. Retries are held (not nacked with a delay, which the bus
/// would time by the real clock) however long their delay.
fn retry_service(bus: &taskbus_bus::Bus, clock: &ManualClock) -> RetryService {
    let options = RetryOptions {
        max_hold: Duration::from_secs(86_400),
        ..RetryOptions::default()
    };
    RetryService::new(bus.clone(), retry_config(), Arc::new(clock.clone())).options(options)
}

fn failure(task: &Task, at: &str) -> Task {
    let mut done = task.clone();
    done.started = Some(util::utc(at));
    done.ended = Some(util::utc(at));
    done.result = Some(TaskResult::Error);
    done.msg = "boom".into();
    done
}

#[tokio::test]
async fn retry_waits_the_backoff_then_gives_up_to_the_failed_topic() {
    let bus = bus("retry-backoff").await;
    let mut flaky = watch(&bus, "flaky").await;
    let mut failed = watch(&bus, "failed").await;
    let clock = ManualClock::new(utc("2024-01-02T10:00:00Z"));
    let stop = CancellationToken::new();
    let service = retry_service(&bus, &clock);
    let handle = tokio::spawn(service.run(stop.clone()));

    let task = Task::new("flaky", "x");
    bus.send("done", &failure(&task, "2024-01-02T10:00:00Z"))
        .await
        .unwrap();
    settle().await;
    clock.advance(Duration::from_secs(9 * 60 + 59));
    nothing(&mut flaky, 100).await;
    clock.advance(Duration::from_secs(1));
    let retry1 = next(&mut flaky).await;
    assert_eq!(
        (retry1.id.as_str(), retry1.attempt()),
        (task.id.as_str(), 1)
    );

    bus.send("done", &failure(&retry1, "2024-01-02T10:11:00Z"))
        .await
        .unwrap();
    settle().await;
    clock.set(utc("2024-01-02T10:30:59Z"));
    nothing(&mut flaky, 100).await;
    clock.set(utc("2024-01-02T10:31:00Z"));
    let retry2 = next(&mut flaky).await;
    assert_eq!(retry2.attempt(), 2);

    bus.send("done", &failure(&retry2, "2024-01-02T10:32:00Z"))
        .await
        .unwrap();
    let gone = next(&mut failed).await;
    assert_eq!(gone.id, task.id);
    assert_eq!(gone.meta.get_all(retry::HISTORY).count(), 3);
    assert!(gone
        .meta
        .get(retry::FAILED_REASON)
        .unwrap()
        .contains("after 2 retries"));
    nothing(&mut flaky, 100).await;
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_pending_retry_survives_a_restart_of_the_service() {
    let bus = bus("retry-restart").await;
    let mut flaky = watch(&bus, "flaky").await;
    let clock = ManualClock::new(utc("2024-01-02T10:00:00Z"));
    let task = Task::new("flaky", "x");
    bus.send("done", &failure(&task, "2024-01-02T10:00:00Z"))
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let first = tokio::spawn(retry_service(&bus, &clock).run(stop.clone()));
    settle().await;
    stop.cancel();
    first.await.unwrap().unwrap();
    nothing(&mut flaky, 100).await;

    let stop = CancellationToken::new();
    let second = tokio::spawn(retry_service(&bus, &clock).run(stop.clone()));
    settle().await;
    clock.set(utc("2024-01-02T10:10:00Z"));
    let retry1 = next(&mut flaky).await;
    assert_eq!(
        (retry1.id.as_str(), retry1.attempt()),
        (task.id.as_str(), 1)
    );
    nothing(&mut flaky, 200).await;
    stop.cancel();
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn warn_alert_and_complete_are_left_alone() {
    let bus = bus("retry-ignore").await;
    let mut flaky = watch(&bus, "flaky").await;
    let mut failed = watch(&bus, "failed").await;
    let clock = ManualClock::new(utc("2024-01-02T10:00:00Z"));
    let stop = CancellationToken::new();
    let handle = tokio::spawn(retry_service(&bus, &clock).run(stop.clone()));
    for result in [TaskResult::Warn, TaskResult::Alert, TaskResult::Complete] {
        let mut done = Task::new("flaky", "x");
        done.end(result, "m");
        bus.send("done", &done).await.unwrap();
    }
    settle().await;
    clock.advance(Duration::from_secs(3600));
    nothing(&mut flaky, 100).await;
    nothing(&mut failed, 100).await;
    stop.cancel();
    handle.await.unwrap().unwrap();
}
