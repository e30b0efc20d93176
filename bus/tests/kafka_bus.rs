//! Kafka-specific behaviour beyond the conformance suite: errors that say what to do, nack copies
//! that only their group sees, the in-flight limit, and rebalances that commit exactly what is done.
#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod kafka_support;

use std::time::{Duration, Instant};

use kafka_support::{base_url, connect, test_url, unique};
use taskbus_bus::{Bus, ConsumerOptions, Received, Subscription, Task};

async fn next(sub: &mut Subscription, within: Duration) -> Option<Received> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(next) => next.unwrap(),
        Err(_) => None,
    }
}

#[tokio::test]
async fn an_unreachable_broker_is_named_with_what_to_do() {
    let started = Instant::now();
    let err = Bus::connect("kafka://127.0.0.1:1?connect_timeout=2s")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot connect to kafka://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("is the Kafka broker running"), "{err}");
    assert!(err.contains("scripts/brokers/kafka.sh"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_misspelt_option_fails_before_any_network_wait() {
    let started = Instant::now();
    let err = Bus::connect("kafka://127.0.0.1:1?partition=3&connect_timeout=30s")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean partitions"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let err = Bus::connect("kafka://127.0.0.1:1?compression=brotli")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("zstd"), "{err}");
}

/// The bundled librdkafka has TLS and zstd: the settings are taken (the broker at port 1 is then
/// what fails, not the configuration).
#[tokio::test]
async fn tls_and_zstd_settings_are_accepted() {
    let err = Bus::connect(
        "kafka://127.0.0.1:1?connect_timeout=1s&compression=zstd&rdkafka.security.protocol=ssl",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot connect to"), "{err}");
}

/// A nack re-publishes the task to its topic for the nacking group only: another group on the
/// same topic sees the task once, the nacking group sees it again with its delivery counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_copy_goes_only_to_the_group_that_nacked() {
    let bus = connect(&test_url(&base_url(), "")).await;
    let topic = unique("nack-copy");
    let mut nacking = bus.subscribe(&topic, &unique("nacking")).await.unwrap();
    let mut other = bus.subscribe(&topic, &unique("other")).await.unwrap();
    let task = Task::new("nack-copy", "once");
    bus.send(&topic, &task).await.unwrap();

    let first = next(&mut nacking, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (first.task.id.as_str(), first.delivery_count()),
        (task.id.as_str(), 1)
    );
    first.nack(None).await.unwrap();
    let again = next(&mut nacking, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (again.task.id.as_str(), again.delivery_count()),
        (task.id.as_str(), 2)
    );
    again.ack().await.unwrap();

    let seen = next(&mut other, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (seen.task.id.as_str(), seen.delivery_count()),
        (task.id.as_str(), 1)
    );
    seen.ack().await.unwrap();
    if let Some(r) = next(&mut other, Duration::from_secs(3)).await {
        panic!(
            "the other group got the nacked copy too: {:?} (count {})",
            r.task.id,
            r.delivery_count()
        );
    }
    if let Some(r) = next(&mut nacking, Duration::from_millis(500)).await {
        panic!("the nacking group got a third copy: {:?}", r.task.id);
    }
    bus.close().await.unwrap();
}

/// A consumer never holds more than `max_in_flight` unsettled messages; settling one lets the next
/// one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_what_a_consumer_holds() {
    let bus = connect(&test_url(&base_url(), "")).await;
    let topic = unique("in-flight");
    let tasks: Vec<Task> = (0..30)
        .map(|i| Task::new("in-flight", format!("#{i}")))
        .collect();
    bus.send_all(&topic, &tasks, 30).await.unwrap();
    let options = ConsumerOptions::group(unique("g")).max_in_flight(5);
    let mut sub = bus.subscribe_with(&topic, options).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut sub, Duration::from_secs(30)).await.unwrap());
    }
    if let Some(r) = next(&mut sub, Duration::from_secs(2)).await {
        panic!(
            "a sixth task {:?} arrived while five were unsettled",
            r.task.info
        );
    }
    held.pop().unwrap().ack().await.unwrap();
    let sixth = next(&mut sub, Duration::from_secs(10)).await;
    assert!(sixth.is_some(), "no task after one of five was acked");
    drop(held);
    drop(sixth);
    bus.close().await.unwrap();
}

/// When a second member joins, the first gives its partition up (after `rebalance_wait`, here
/// already over) with deliveries unsettled, committing what is done up to the lowest unfinished
/// one: after the rebalance the partition resumes exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_commits_up_to_the_lowest_unfinished_and_resumes_there() {
    // One partition, so offsets follow the sends.
    let url = test_url(&base_url(), "rebalance_wait=1s&partitions=1");
    let (topic, group) = (unique("rebalance"), unique("g"));
    let first_bus = connect(&url).await;
    let tasks: Vec<Task> = (0..30)
        .map(|i| Task::new("rebalance", format!("{i}")))
        .collect();
    for task in &tasks {
        first_bus.send(&topic, task).await.unwrap();
    }
    let mut first = first_bus.subscribe(&topic, &group).await.unwrap();
    // Done: 0..=10 and the even ones above; the odd ones above 10 stay unfinished.
    let mut held = Vec::new();
    for _ in 0..tasks.len() {
        let r = next(&mut first, Duration::from_secs(30)).await.unwrap();
        let n: usize = r.task.info.parse().unwrap();
        if n <= 10 || n % 2 == 0 {
            r.ack().await.unwrap();
        } else {
            held.push(r);
        }
    }

    let second_bus = connect(&url).await;
    let mut second = second_bus.subscribe(&topic, &group).await.unwrap();
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while again.len() < 19 && Instant::now() < deadline {
        tokio::select! {
            Some(r) = next(&mut first, Duration::from_millis(200)) => {
                again.push(r.task.info.parse::<usize>().unwrap());
                r.ack().await.unwrap();
            }
            Some(r) = next(&mut second, Duration::from_millis(200)) => {
                again.push(r.task.info.parse::<usize>().unwrap());
                r.ack().await.unwrap();
            }
            else => {}
        }
    }
    assert_eq!(
        again,
        (11..30).collect::<Vec<_>>(),
        "after the rebalance the partition resumes at the lowest unfinished task (11), in order"
    );
    // The held deliveries' acks come too late (their partition was given up): ignored.
    for r in held {
        r.ack().await.unwrap();
    }
    drop((first, second));
    first_bus.close().await.unwrap();
    second_bus.close().await.unwrap();
}
