//! The NATS backend's own behaviour, beyond the conformance suite, against a real nats-server:
//! connection errors, leases kept by in_progress, de-duplication, the in-flight limit, stream
//! settings, and recovering a deleted consumer.
#![cfg(feature = "nats")]

mod nats_support;

use std::time::Duration;

use nats_support::{base_url, connect, test_url, unique, NatsServer};
use taskbus_bus::{Bus, ConsumerOptions, Subscription, Task};

async fn bus(extra: &str) -> Bus {
    connect(&test_url(&base_url(), extra)).await
}

/// The next task within `secs` seconds, or a failure naming `what`.
async fn next_within(sub: &mut Subscription, secs: u64, what: &str) -> taskbus_bus::Received {
    match tokio::time::timeout(Duration::from_secs(secs), sub.next()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("the subscription ended while waiting for {what}"),
        Ok(Err(e)) => panic!("error while waiting for {what}: {e}"),
        Err(_) => panic!("nothing within {secs}s while waiting for {what}"),
    }
}

/// Whatever arrives within `wait`, or `None`.
async fn maybe_next(sub: &mut Subscription, wait: Duration) -> Option<taskbus_bus::Received> {
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("error while listening: {e}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn unreachable_server_says_how_to_start_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let err = Bus::connect(&format!("nats://127.0.0.1:{port}?ack_wait=5s"))
        .await
        .expect_err("nothing listens there");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot connect to nats://127.0.0.1:{port} (connection refused): "
        )),
        "{msg}"
    );
    assert!(
        msg.contains("is nats-server running? start it with JetStream"),
        "{msg}"
    );
}

#[tokio::test]
async fn misspelt_option_is_reported_before_connecting() {
    let err = Bus::connect("nats://127.0.0.1:1?ackwait=5s")
        .await
        .expect_err("a typo");
    let msg = err.to_string();
    assert!(
        msg.contains("unknown option \"ackwait\"; did you mean ack_wait?"),
        "{msg}"
    );
}

#[tokio::test]
async fn server_without_jetstream_is_a_clear_error() {
    let server = NatsServer::start(false);
    let err = Bus::connect(&server.url())
        .await
        .expect_err("JetStream is off");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot connect to {}", server.url())),
        "{msg}"
    );
    assert!(
        msg.contains("JetStream disabled: start nats-server with -js"),
        "{msg}"
    );
}

/// A task that runs three times the ack wait keeps its lease while its worker calls `in_progress`:
/// another member of the group, listening the whole time, never gets it. Without `in_progress`
/// (the control), the other member gets it after one ack wait.
#[tokio::test]
async fn long_task_keeps_its_lease_past_the_ack_wait() {
    let ack_wait = Duration::from_secs(2);
    let (worker_bus, rival_bus) = (bus("ack_wait=2s").await, bus("ack_wait=2s").await);
    let (topic, group) = (unique("long"), unique("workers"));
    let options = ConsumerOptions::group(&group).max_in_flight(1);
    let mut worker = worker_bus
        .subscribe_with(&topic, options.clone())
        .await
        .expect("subscribe");
    worker_bus
        .send(&topic, &Task::new("long", "three ack waits"))
        .await
        .expect("send");
    let r = next_within(&mut worker, 10, "the task").await;
    let mut rival = rival_bus
        .subscribe_with(&topic, options)
        .await
        .expect("subscribe");

    let started = std::time::Instant::now();
    let keep_alive = async {
        while started.elapsed() < ack_wait * 3 {
            tokio::time::sleep(ack_wait / 5).await;
            r.in_progress().await.expect("in_progress");
        }
    };
    tokio::select! {
        () = keep_alive => {}
        stolen = rival.next() => panic!(
            "the task was handed to another worker after {:?} (ack wait {ack_wait:?}) although \
             in_progress was called every {:?}: {:?}",
            started.elapsed(), ack_wait / 5, stolen.map(|s| s.map(|s| s.task.id))
        ),
    }
    r.ack().await.expect("ack after three ack waits");
    assert!(
        maybe_next(&mut rival, ack_wait * 2).await.is_none(),
        "an acked task came back"
    );

    // The control: a task held as long without in_progress loses its lease to the rival.
    let (topic, options) = (
        unique("long-control"),
        ConsumerOptions::group(&group).max_in_flight(1),
    );
    let mut worker = worker_bus
        .subscribe_with(&topic, options.clone())
        .await
        .expect("subscribe");
    let task = Task::new("long", "no keep-alive");
    worker_bus.send(&topic, &task).await.expect("send");
    let held = next_within(&mut worker, 10, "the control task").await;
    let mut rival = rival_bus
        .subscribe_with(&topic, options)
        .await
        .expect("subscribe");
    let stolen = next_within(&mut rival, 10, "the control task, after its lease ran out").await;
    assert_eq!(
        (stolen.task.id.as_str(), stolen.delivery_count()),
        (task.id.as_str(), 2)
    );
    stolen.ack().await.expect("ack");
    drop(held);
}

/// The same task published twice within the duplicate window is stored once; the same task with
/// another attempt is a new message.
#[tokio::test]
async fn republished_task_is_dropped_within_the_window() {
    let bus = bus("").await;
    let topic = unique("dedup");
    let task = Task::new("dedup", "once");
    bus.send(&topic, &task).await.expect("send");
    bus.send(&topic, &task)
        .await
        .expect("a duplicate send still succeeds");
    let mut retry = task.clone();
    retry.meta.set("attempt", "1");
    bus.send(&topic, &retry).await.expect("send the retry");
    bus.send_raw(&topic, task.to_json_bytes())
        .await
        .expect("raw sends carry no id");

    let mut sub = bus
        .subscribe_with(&topic, ConsumerOptions::group("g").finite(true))
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the end of the topic")
        .expect("next")
    {
        got.push((r.task.id.clone(), r.task.attempt()));
        r.ack().await.expect("ack");
    }
    assert_eq!(
        got,
        [
            (task.id.clone(), 0),
            (task.id.clone(), 1),
            (task.id.clone(), 0)
        ]
    );
}

/// A consumer never holds more unsettled deliveries than `max_in_flight`; settling one lets the
/// next in.
#[tokio::test]
async fn max_in_flight_bounds_unsettled_deliveries() {
    let bus = bus("").await;
    let topic = unique("inflight");
    let tasks: Vec<Task> = (0..10)
        .map(|i| Task::new("inflight", i.to_string()))
        .collect();
    bus.send_all(&topic, &tasks, 10).await.expect("send");
    let mut sub = bus
        .subscribe_with(&topic, ConsumerOptions::group("g").max_in_flight(3))
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_within(&mut sub, 10, "one of the first three").await);
    }
    assert!(
        maybe_next(&mut sub, Duration::from_millis(700))
            .await
            .is_none(),
        "a fourth delivery while three are unsettled"
    );
    held.remove(0).ack().await.expect("ack");
    held.push(next_within(&mut sub, 10, "the fourth, after an ack").await);
    for r in held {
        r.ack().await.expect("ack");
    }
}

/// A delivery dropped without ack or nack comes back at once, not after the ack wait.
#[tokio::test]
async fn dropped_delivery_comes_back_without_waiting_for_the_lease() {
    let bus = bus("ack_wait=60s").await;
    let topic = unique("dropped");
    bus.send(&topic, &Task::new("dropped", "x"))
        .await
        .expect("send");
    let mut sub = bus.subscribe(&topic, "g").await.expect("subscribe");
    let first = next_within(&mut sub, 10, "the task").await;
    let id = first.task.id.clone();
    drop(first);
    let again = next_within(
        &mut sub,
        10,
        "the dropped task, well before the 60s ack wait",
    )
    .await;
    assert_eq!(
        (again.task.id.as_str(), again.delivery_count()),
        (id.as_str(), 2)
    );
    again.ack().await.expect("ack");
}

/// The URL's stream settings reach the streams the bus creates, and `storage=memory` is declared
/// not persistent.
#[tokio::test]
async fn stream_settings_come_from_the_url() {
    let bus = bus("storage=memory&duplicate_window=30s&subject_prefix=tb.test.settings").await;
    assert!(!bus.capabilities().persistent);
    let topic = unique("settings");
    bus.send(&topic, &Task::new("settings", "x"))
        .await
        .expect("send");

    let client = nats_support::raw_client(&base_url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(format!("{}{topic}", nats_support::run_prefix()))
        .await
        .expect("the stream exists");
    let config = &stream.info().await.expect("info").config;
    assert_eq!(config.subjects, [format!("tb.test.settings.{topic}")]);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(30));
    assert_eq!(config.max_age, Duration::from_secs(3600));
}

/// Topics that map to one stream name are told apart, with an error that says what to do.
#[tokio::test]
async fn topics_that_share_a_stream_name_are_refused() {
    let bus = bus("").await;
    let base = unique("clash");
    bus.send(&format!("{base}.a"), &Task::new("clash", "x"))
        .await
        .expect("send");
    let err = bus
        .send(&format!("{base}_a"), &Task::new("clash", "y"))
        .await
        .expect_err("same stream name");
    assert!(
        err.to_string()
            .contains("rename the topic, or use another stream_prefix"),
        "{err}"
    );
}

/// A durable consumer deleted on the server while a subscription runs is created again, and the
/// subscription carries on.
#[tokio::test]
async fn deleted_consumer_is_created_again() {
    let bus = bus("").await;
    let topic = unique("deleted");
    let mut sub = bus.subscribe(&topic, "g").await.expect("subscribe");
    bus.send(&topic, &Task::new("deleted", "before"))
        .await
        .expect("send");
    next_within(&mut sub, 10, "the first task")
        .await
        .ack()
        .await
        .expect("ack");

    let client = nats_support::raw_client(&base_url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}{topic}", nats_support::run_prefix()))
        .await
        .expect("stream");
    stream
        .delete_consumer("g")
        .await
        .expect("delete the consumer");

    bus.send(&topic, &Task::new("deleted", "after"))
        .await
        .expect("send");
    let r = next_within(&mut sub, 20, "a task after the consumer was deleted").await;
    // A recreated consumer starts again at the beginning of the stream.
    assert!(
        r.task.info == "before" || r.task.info == "after",
        "{}",
        r.task.info
    );
    r.ack().await.expect("ack");
}

/// With `confirm_acks=true` an ack returns once the server has it: a finite consumer opened right
/// after finds nothing left.
#[tokio::test]
async fn confirmed_acks_are_on_the_server_when_ack_returns() {
    let bus = bus("confirm_acks=true").await;
    let topic = unique("confirmed");
    let tasks: Vec<Task> = (0..5)
        .map(|i| Task::new("confirmed", i.to_string()))
        .collect();
    bus.send_all(&topic, &tasks, 5).await.expect("send");
    let mut sub = bus.subscribe(&topic, "g").await.expect("subscribe");
    for _ in 0..5 {
        next_within(&mut sub, 10, "a task")
            .await
            .ack()
            .await
            .expect("a confirmed ack");
    }
    sub.close().await.expect("close");
    let mut rest = bus
        .subscribe_with(&topic, ConsumerOptions::group("g").finite(true))
        .await
        .expect("subscribe");
    let left = tokio::time::timeout(Duration::from_secs(10), rest.next())
        .await
        .expect("the end")
        .expect("next");
    assert!(
        left.is_none(),
        "an acked task came again: {:?}",
        left.map(|r| r.task.id)
    );
}

/// A URL with another `ack_wait` updates an existing durable consumer's.
#[tokio::test]
async fn another_ack_wait_updates_the_durable_consumer() {
    let topic = unique("ackwait");
    let first = bus("ack_wait=2s").await;
    drop(first.subscribe(&topic, "g").await.expect("subscribe"));
    let second = bus("ack_wait=7s").await;
    drop(
        second
            .subscribe(&topic, "g")
            .await
            .expect("subscribe with another ack wait"),
    );

    let client = nats_support::raw_client(&base_url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}{topic}", nats_support::run_prefix()))
        .await
        .expect("stream");
    let info = stream.consumer_info("g").await.expect("consumer info");
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    assert_eq!(
        info.config.description.as_deref(),
        Some(format!("taskbus group g of topic {topic}").as_str())
    );
}

/// A stream made by someone else that holds more subjects than the topic's is used as it is, and
/// a group reads only the topic's subject from it.
#[tokio::test]
async fn a_shared_stream_made_elsewhere_is_filtered_to_the_topic() {
    let bus = bus("").await;
    let topic = unique("shared");
    let subject_prefix = nats_support::run_prefix()
        .trim_end_matches('-')
        .replace('-', ".");
    let client = nats_support::raw_client(&base_url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let other = format!("{subject_prefix}.{topic}-other");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("{}{topic}", nats_support::run_prefix()),
        subjects: vec![format!("{subject_prefix}.{topic}"), other.clone()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("create a stream of two subjects");
    js.publish(
        other,
        Task::new("other", "not this topic").to_json_bytes().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    bus.send(&topic, &Task::new("shared", "this topic"))
        .await
        .expect("send");

    let mut sub = bus
        .subscribe_with(&topic, ConsumerOptions::group("g").finite(true))
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the end")
        .expect("next")
    {
        got.push(r.task.info.clone());
        r.ack().await.expect("ack");
    }
    assert_eq!(got, ["this topic"]);
}

/// A fast consumer fetches ahead; when its caller then stays away past the lease (holding slow
/// work, its leases kept by in_progress), what it fetched ahead goes to another member, and the
/// stale copies are never handed out: no task reaches two workers, none is lost.
#[tokio::test]
async fn fetched_ahead_messages_never_reach_two_workers() {
    let ack_wait = Duration::from_secs(2);
    let (worker_bus, rival_bus) = (bus("ack_wait=2s").await, bus("ack_wait=2s").await);
    let (topic, group) = (unique("ahead"), unique("workers"));
    let tasks: Vec<Task> = (0..12).map(|i| Task::new("ahead", i.to_string())).collect();
    worker_bus.send_all(&topic, &tasks, 12).await.expect("send");
    let mut worker = worker_bus
        .subscribe_with(&topic, ConsumerOptions::group(&group).max_in_flight(2))
        .await
        .expect("subscribe");
    let mut by_worker = Vec::new();
    for _ in 0..6 {
        let r = next_within(&mut worker, 10, "a quick task").await;
        by_worker.push(r.task.id.clone());
        r.ack().await.expect("ack");
    }
    let held = [
        next_within(&mut worker, 10, "a slow task").await,
        next_within(&mut worker, 10, "another slow task").await,
    ];
    by_worker.extend(held.iter().map(|r| r.task.id.clone()));

    let rival = tokio::spawn(async move {
        let mut sub = rival_bus
            .subscribe(&topic, &group)
            .await
            .expect("subscribe");
        let mut got = Vec::new();
        while let Some(r) = maybe_next(&mut sub, Duration::from_secs(6)).await {
            got.push(r.task.id.clone());
            r.ack().await.expect("ack");
        }
        got
    });
    let until = std::time::Instant::now() + ack_wait * 3;
    while std::time::Instant::now() < until {
        tokio::time::sleep(ack_wait / 5).await;
        for r in &held {
            r.in_progress().await.expect("in_progress");
        }
    }
    for r in held {
        r.ack().await.expect("ack the slow tasks");
    }
    while let Some(r) = maybe_next(&mut worker, Duration::from_secs(1)).await {
        by_worker.push(r.task.id.clone());
        r.ack().await.expect("ack");
    }
    let by_rival = rival.await.expect("the rival");
    let twice: Vec<&String> = by_worker
        .iter()
        .filter(|id| by_rival.contains(id))
        .collect();
    assert!(twice.is_empty(), "tasks handed to both workers: {twice:?}");
    let mut all: Vec<String> = by_worker.into_iter().chain(by_rival).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), tasks.len(), "every task handed out");
}
