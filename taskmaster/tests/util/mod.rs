//! Helpers shared by the service tests: unique bus names, times, and reading a topic.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbus_bus::{Bus, ConsumerOptions, Subscription, Task};

/// A fresh in-process bus, unique to the test.
pub(crate) async fn bus(test: &str) -> Bus {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    Bus::connect(&format!("mem:{test}-{}", uuid::Uuid::new_v4().simple()))
        .await
        .unwrap()
}

/// Parses an RFC 3339 time.
pub(crate) fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A subscription to `topic` in a group of its own.
pub(crate) async fn watch(bus: &Bus, topic: &str) -> Subscription {
    bus.subscribe_with(
        topic,
        ConsumerOptions::group(format!("watch-{}", uuid::Uuid::new_v4().simple())),
    )
    .await
    .unwrap()
}

/// The next task on `sub`, waiting up to 5 s of real time.
pub(crate) async fn next(sub: &mut Subscription) -> Task {
    let r = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a task within 5s")
        .unwrap()
        .unwrap();
    let task = r.task.clone();
    r.ack().await.unwrap();
    task
}

/// Asserts that nothing arrives on `sub` for `ms` milliseconds of real time.
pub(crate) async fn nothing(sub: &mut Subscription, ms: u64) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(ms), sub.next()).await {
        panic!("expected nothing, got {:?}", got.unwrap().map(|r| r.task));
    }
}

/// Lets spawned tasks run (they wake on the manual clock).
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}
