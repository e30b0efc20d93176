//! The AMQP bus comes back by itself when RabbitMQ closes its connections or deletes a queue under a
//! consumer, and loses nothing. In a test binary of its own: `rabbitmqctl close_all_connections`
//! closes every connection to the broker.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)]

mod amqp_support;

use std::collections::HashSet;
use std::time::Duration;

use amqp_support::{connect, rabbitmqctl, unique};
use taskbus_bus::{Subscription, Task};

/// Receives and acks until every id of `expected` arrived (duplicates allowed), riding out errors.
async fn receive_all(mut sub: Subscription, expected: HashSet<String>) -> (usize, usize) {
    let (mut seen, mut receipts, mut errors) = (HashSet::new(), 0, 0);
    let all = async {
        while !expected.is_subset(&seen) {
            match sub.next().await {
                Ok(Some(r)) => {
                    receipts += 1;
                    seen.insert(r.task.id.clone());
                    if r.ack().await.is_err() {
                        errors += 1;
                    }
                }
                Ok(None) => panic!("the subscription ended"),
                Err(_) => errors += 1,
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(90), all)
        .await
        .is_err()
    {
        let missing = expected.difference(&seen).count();
        panic!("{missing} of {} tasks never arrived", expected.len());
    }
    (receipts, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_are_reopened_and_nothing_is_lost() {
    let (topic, group) = (unique("t"), unique("g"));
    let consumer_bus = connect("").await;
    let sub = consumer_bus.subscribe(&topic, &group).await.unwrap();
    let tasks: Vec<Task> = (0..300)
        .map(|i| Task::new("reconnect", format!("#{i}")))
        .collect();
    let expected = tasks.iter().map(|t| t.id.clone()).collect();
    let receiver = tokio::spawn(receive_all(sub, expected));

    let sender = connect("").await;
    for (i, task) in tasks.iter().enumerate() {
        if i == 100 || i == 200 {
            rabbitmqctl(&[
                "close_all_connections",
                "taskbus test: closing every connection",
            ])
            .await
            .unwrap();
        }
        // No retries here: the bus itself reconnects and sends again.
        sender.send(&topic, task).await.unwrap();
    }
    let (receipts, errors) = receiver.await.unwrap();
    eprintln!("300 tasks across two closings: {receipts} receipts, {errors} errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_its_consumer_is_declared_again() {
    let (topic, group) = (unique("t"), unique("g"));
    let bus = connect("").await;
    let mut sub = bus.subscribe(&topic, &group).await.unwrap();
    let first = Task::new("deleted", "before");
    bus.send(&topic, &first).await.unwrap();
    let r = sub.next().await.unwrap().unwrap();
    assert_eq!(r.task.id, first.id);
    r.ack().await.unwrap();

    let queue = format!("taskbus:{topic}:{group}");
    rabbitmqctl(&["delete_queue", &queue]).await.unwrap();
    // RabbitMQ cancels the consumer; the next `next` declares the queue again and consumes it.
    let waiting = tokio::spawn(async move {
        let r = sub.next().await.unwrap().unwrap();
        let id = r.task.id.clone();
        r.ack().await.unwrap();
        id
    });
    let second = Task::new("deleted", "after");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Until the queue is back, a send lands in the topic's backlog, which the consumer reads too.
    bus.send(&topic, &second).await.unwrap();
    let got = tokio::time::timeout_at(deadline, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, second.id);
}
