//! What the AMQP backend adds to the conformance suite, against a real RabbitMQ: the errors a user
//! sees when RabbitMQ refuses them, messages sent before any group existed, acks that are batched yet
//! never cover a delivery its caller did not ack, and the delivery counts of nacked messages.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)]

mod amqp_support;

use std::collections::HashSet;
use std::time::Duration;

use amqp_support::{base_url, connect, unique};
use taskbus_bus::{Bus, BusError, ConsumerOptions, Received, Subscription, Task};

/// `base_url()` with its user, password or vhost replaced.
fn url_changed(change: impl FnOnce(&mut url::Url)) -> String {
    let mut url = url::Url::parse(&base_url()).unwrap();
    change(&mut url);
    url.to_string()
}

async fn refused(url: &str) -> String {
    match Bus::connect(url).await {
        Ok(_) => panic!("RabbitMQ accepted {url}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_wrong_password_names_the_user_and_the_fix() {
    let url = url_changed(|u| u.set_password(Some("not-the-password")).unwrap());
    let err = refused(&url).await;
    let user = url::Url::parse(&url).unwrap().username().to_owned();
    assert!(err.contains(&format!("refused user \"{user}\"")), "{err}");
    assert!(err.contains("rabbitmqctl add_user"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "the password leaked: {err}"
    );
}

#[tokio::test]
async fn an_unknown_vhost_names_the_vhost_and_the_fix() {
    let vhost = unique("no-such-vhost");
    let url = url_changed(|u| u.set_path(&vhost));
    let err = refused(&url).await;
    assert!(err.contains(&format!("vhost \"{vhost}\"")), "{err}");
    assert!(
        err.contains(&format!("rabbitmqctl add_vhost {vhost}")),
        "{err}"
    );
}

#[tokio::test]
async fn nothing_listening_says_how_to_start_rabbitmq() {
    let err = refused("amqp://guest:guest@127.0.0.1:1/%2f").await;
    assert!(err.contains("rabbitmq-server"), "{err}");
}

#[tokio::test]
async fn an_unknown_option_fails_before_connecting() {
    // Port 1 refuses connections: an error about the option proves no connection was tried.
    let err = Bus::connect("amqp://guest:guest@127.0.0.1:1/%2f?exchnage=x").await;
    match err {
        Err(BusError::Url { reason, .. }) => {
            assert!(reason.contains("did you mean exchange"), "{reason}");
        }
        other => panic!("expected an error about the option, got {other:?}"),
    }
}

#[tokio::test]
async fn a_queue_declared_otherwise_is_explained() {
    let (topic, group) = (unique("t"), unique("g"));
    let classic = connect("").await;
    classic.subscribe(&topic, &group).await.unwrap();
    let quorum = connect("queue_type=quorum").await;
    let Err(err) = quorum.subscribe(&topic, &group).await else {
        panic!("a quorum bus subscribed to a classic queue");
    };
    let err = err.to_string();
    assert!(err.contains("other settings"), "{err}");
    assert!(err.contains("queue_type=quorum"), "{err}");
    assert!(err.contains("delete_queue"), "{err}");
}

async fn receive(sub: &mut Subscription) -> Received {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a task within 10 s")
        .unwrap()
        .expect("a task, not the end")
}

/// Receives until nothing comes for a second; acks everything; returns the ids.
async fn drain(sub: &mut Subscription) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        let r = next.unwrap().expect("a task");
        ids.push(r.task.id.clone());
        r.ack().await.unwrap();
    }
    ids
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn tasks_sent_before_any_group_go_to_the_first_group() {
    let bus = connect("").await;
    let topic = unique("early");
    let early: Vec<Task> = (0..30)
        .map(|i| Task::new("early", format!("#{i}")))
        .collect();
    bus.send_all(&topic, &early, 8).await.unwrap();

    let mut first = bus.subscribe(&topic, &unique("first")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..early.len() {
        let r = receive(&mut first).await;
        got.push(r.task.id.clone());
        r.ack().await.unwrap();
    }
    assert_eq!(
        sorted(got),
        sorted(ids(&early)),
        "the first group gets the backlog"
    );

    let mut second = bus.subscribe(&topic, &unique("second")).await.unwrap();
    let late: Vec<Task> = (0..5).map(|i| Task::new("late", format!("#{i}"))).collect();
    bus.send_all(&topic, &late, 8).await.unwrap();
    assert_eq!(
        sorted(drain(&mut second).await),
        sorted(ids(&late)),
        "a later group starts with later tasks"
    );
    assert_eq!(
        sorted(drain(&mut first).await),
        sorted(ids(&late)),
        "the first group gets the later tasks once"
    );
}

/// Holds the first of ten deliveries, acks the nine after it, then loses the connection: only the
/// held one comes back, so the acks went out without a multiple-ack covering it.
#[tokio::test]
async fn acks_never_cover_a_delivery_its_caller_did_not_ack() {
    let (topic, group) = (unique("t"), unique("g"));
    let sender = connect("").await;
    let crashing = connect("").await;
    let options = ConsumerOptions::group(&group).max_in_flight(10);
    let mut sub = crashing.subscribe_with(&topic, options).await.unwrap();
    let tasks: Vec<Task> = (0..10)
        .map(|i| Task::new("held", format!("#{i}")))
        .collect();
    for task in &tasks {
        sender.send(&topic, task).await.unwrap();
    }
    let held = receive(&mut sub).await;
    assert_eq!(held.task.id, tasks[0].id, "the first task first");
    let mut rest = Vec::new();
    for _ in 1..tasks.len() {
        rest.push(receive(&mut sub).await);
    }
    // In reverse, so the settler sees acks above the held delivery and in no useful order.
    for r in rest.into_iter().rev() {
        r.ack().await.unwrap();
    }
    crashing.close().await.unwrap();
    assert!(
        held.ack().await.is_err(),
        "an ack after the connection closed cannot succeed"
    );

    let mut survivor = sender.subscribe(&topic, &group).await.unwrap();
    let back = receive(&mut survivor).await;
    assert_eq!(back.task.id, tasks[0].id);
    assert_eq!(back.delivery_count(), 2, "it was delivered once before");
    back.ack().await.unwrap();
    assert_eq!(
        drain(&mut survivor).await,
        Vec::<String>::new(),
        "acked tasks came back"
    );
}

/// Acks of many deliveries settled in any order all reach RabbitMQ.
#[tokio::test]
async fn acks_in_any_order_all_count() {
    let (topic, group) = (unique("t"), unique("g"));
    let bus = connect("").await;
    let mut sub = bus.subscribe(&topic, &group).await.unwrap();
    let tasks: Vec<Task> = (0..200)
        .map(|i| Task::new("any", format!("#{i}")))
        .collect();
    bus.send_all(&topic, &tasks, 32).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..tasks.len() {
        received.push(receive(&mut sub).await);
    }
    // Every third in a wave, then the rest, concurrently.
    let (first, second): (Vec<_>, Vec<_>) = received
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 3 == 0);
    futures::future::join_all(first.into_iter().map(|(_, r)| r.ack())).await;
    futures::future::join_all(second.into_iter().rev().map(|(_, r)| r.ack())).await;
    sub.close().await.unwrap();
    drop(sub);
    bus.close().await.unwrap();

    let other = connect("").await;
    let mut sub = other.subscribe(&topic, &group).await.unwrap();
    assert_eq!(
        drain(&mut sub).await,
        Vec::<String>::new(),
        "acked tasks came back"
    );
}

/// A task nacked over and over counts each delivery, on classic and on quorum queues, and with and
/// without a delay.
#[tokio::test]
async fn nacks_count_deliveries_on_both_queue_types() {
    for options in ["", "queue_type=quorum"] {
        let bus = connect(options).await;
        let (topic, group) = (unique("t"), unique("g"));
        let mut sub = bus.subscribe(&topic, &group).await.unwrap();
        let task = Task::new("nacked", "again and again");
        bus.send(&topic, &task).await.unwrap();
        for expected in 1..=4 {
            let r = receive(&mut sub).await;
            assert_eq!(
                (r.task.id.as_str(), r.delivery_count()),
                (task.id.as_str(), expected),
                "{options}"
            );
            let delay = (expected % 2 == 0).then_some(Duration::from_millis(200));
            r.nack(delay).await.unwrap();
        }
        let r = receive(&mut sub).await;
        assert_eq!(r.delivery_count(), 5, "{options}");
        r.ack().await.unwrap();
        assert_eq!(drain(&mut sub).await, Vec::<String>::new(), "{options}");
    }
}

/// Consumers of one group on two connections share the queue; each task is handed to one of them.
#[tokio::test]
async fn members_on_two_connections_share_without_duplicates() {
    let (topic, group) = (unique("t"), unique("g"));
    let (a, b) = (connect("").await, connect("").await);
    let mut sub_a = a
        .subscribe_with(&topic, ConsumerOptions::group(&group).max_in_flight(4))
        .await
        .unwrap();
    let mut sub_b = b
        .subscribe_with(&topic, ConsumerOptions::group(&group).max_in_flight(4))
        .await
        .unwrap();
    let tasks: Vec<Task> = (0..100)
        .map(|i| Task::new("share", format!("#{i}")))
        .collect();
    a.send_all(&topic, &tasks, 16).await.unwrap();
    let (got_a, got_b) = tokio::join!(drain(&mut sub_a), drain(&mut sub_b));
    let all: HashSet<String> = got_a.iter().chain(&got_b).cloned().collect();
    assert_eq!(got_a.len() + got_b.len(), tasks.len(), "no duplicates");
    assert_eq!(all, ids(&tasks).into_iter().collect());
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members got work: {} and {}",
        got_a.len(),
        got_b.len()
    );
}
