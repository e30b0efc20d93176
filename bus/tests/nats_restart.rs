//! nats-server crashes (SIGKILL) mid-stream on a server of the test's own: the publisher's sends
//! wait and succeed, the consumer carries on by itself without an error, and no task is lost.
#![cfg(feature = "nats")]

mod nats_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nats_support::{connect, test_url, unique, NatsServer};
use taskbus_bus::Task;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_stream_loses_nothing() {
    const TASKS: usize = 2_000;
    let server = Arc::new(NatsServer::start(true));
    let url = test_url(&server.url(), "");
    let (pub_bus, sub_bus) = (connect(&url).await, connect(&url).await);
    let topic = unique("crash");
    let mut sub = sub_bus.subscribe(&topic, "g").await.expect("subscribe");
    let tasks: Vec<Task> = (0..TASKS)
        .map(|i| Task::new("crash", i.to_string()))
        .collect();
    let halfway = Arc::new(Notify::new());

    let publish = async {
        for (i, chunk) in tasks.chunks(100).enumerate() {
            if i == 10 {
                halfway.notify_one();
            }
            // Each send waits out the crash by itself (publish_timeout): no retry here.
            pub_bus
                .send_all(&topic, chunk, 32)
                .await
                .expect("a send across the crash");
        }
    };
    let crasher = tokio::spawn({
        let (server, halfway) = (server.clone(), halfway.clone());
        async move {
            halfway.notified().await;
            let at = Instant::now();
            tokio::task::spawn_blocking(move || server.crash_and_restart())
                .await
                .expect("restart");
            at
        }
    });

    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut ack_errors = 0;
    let receive = async {
        while seen.len() < TASKS {
            let r = match sub.next().await {
                Ok(Some(r)) => r,
                Ok(None) => panic!("the subscription ended during the crash"),
                Err(e) => panic!("the consumer did not carry on by itself: {e}"),
            };
            *seen.entry(r.task.id.clone()).or_default() += 1;
            if r.ack().await.is_err() {
                ack_errors += 1; // it comes again, as a duplicate
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(publish, receive)
    })
    .await
    .unwrap_or_else(|_| panic!("not every task arrived within 120s"));
    let crashed_at = crasher.await.expect("crasher");
    let missing: Vec<&Task> = tasks.iter().filter(|t| !seen.contains_key(&t.id)).collect();
    assert!(missing.is_empty(), "{} tasks lost", missing.len());
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash_mid_stream_loses_nothing: {TASKS} tasks, none lost, {duplicates} duplicate deliveries, \
         {ack_errors} ack errors, all in {:?} after the crash",
        crashed_at.elapsed()
    );
}
