//! Tasks get from producers to consumers: before and after subscribing, in order, concurrently, on
//! many topics without mixing them, large ones, and a finite consumer ends.

use std::sync::Arc;

use crate::conformance::support::{ids, ledger_for, spawn, Ctx};
use crate::conformance::{Harness, Ledger};
use crate::{ConsumerOptions, Task};

/// Tasks sent while no consumer is running are delivered once one subscribes: to a group that was
/// declared before (every backend), and to a brand-new group (backends with `replay`).
pub async fn publish_before_subscribe<H: Harness>(h: &H) {
    let cx = Ctx::new("publish_before_subscribe", h);
    let bus = cx.connect().await;
    let topic = cx.name("t");
    let group = cx.name("declared");
    cx.declare_group(&bus, &topic, &group).await;

    let tasks = cx.tasks("early", 50);
    let ledger = ledger_for(cx.case(), "declared group", &tasks);
    cx.send(&bus, &topic, &tasks).await;

    let later = cx.connect().await;
    let sub = cx.subscribe(&later, &topic, &group).await;
    let got = cx.spawn_consumer(sub, &ledger, "consumer of the declared group");
    cx.join(vec![got]).await;
    ledger.assert_exactly_once();

    let part = "publish_before_subscribe.new_group";
    if cx.skip_part(part, &[("replay", cx.caps().replay)]) {
        return;
    }
    let ledger = ledger_for(cx.case(), "new group", &tasks);
    let sub = cx.subscribe(&later, &topic, &cx.name("new")).await;
    let got = cx.spawn_consumer(sub, &ledger, "consumer of a new group");
    cx.join(vec![got]).await;
    ledger.assert_exactly_once();
}

/// `send` returns once a task is stored: closing the sending connection right after, or dropping it
/// without closing, loses none of the tasks it sent.
pub async fn sender_close_loses_nothing<H: Harness>(h: &H) {
    let cx = Ctx::new("sender_close_loses_nothing", h);
    let reader = cx.connect().await;
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let sub = cx.subscribe(&reader, &topic, &group).await;
    let closed = cx.tasks("sender closed", 100);
    let dropped = cx.tasks("sender dropped", 100);
    let ledger = ledger_for(cx.case(), "sent", &closed);
    ledger.sent_all(ids(&dropped));
    let consumer = cx.spawn_consumer(sub, &ledger, "the consumer");
    let sender = cx.connect().await;
    cx.send(&sender, &topic, &closed).await;
    cx.limits
        .ok("close the sending connection", sender.close())
        .await;
    let sender = cx.connect().await;
    cx.send(&sender, &topic, &dropped).await;
    drop(sender);
    cx.join(vec![consumer]).await;
    ledger.assert_exactly_once();
}

/// One consumer receives a topic's tasks in the order they were sent.
pub async fn ordered_delivery<H: Harness>(h: &H) {
    let cx = Ctx::new("ordered_delivery", h);
    if cx.skip(&[("ordered", cx.caps().ordered)]) {
        return;
    }
    let bus = cx.connect().await;
    let topic = cx.name("t");
    let group = cx.name("g");
    let sub = cx.subscribe(&bus, &topic, &group).await;
    let tasks = cx.tasks("in order", 100);
    let ledger = ledger_for(cx.case(), "in order", &tasks);
    let consumer = cx.spawn_consumer(sub, &ledger, "the consumer");
    for task in &tasks {
        // One at a time: each send is confirmed before the next starts, so the order is defined.
        cx.limits.ok("send a task", bus.send(&topic, task)).await;
    }
    let got = cx.join(vec![consumer]).await.remove(0);
    ledger.assert_exactly_once();
    let sent = ids(&tasks);
    let received = ids(&got);
    if let Some(i) = sent.iter().zip(&received).position(|(s, r)| s != r) {
        panic!(
            "ordered_delivery: task #{i} out of order: sent {:?}, received {:?} (received order of \
             sent #0..#{}: {:?})",
            sent[i],
            received[i],
            sent.len() - 1,
            received.iter().filter_map(|r| sent.iter().position(|s| s == r)).collect::<Vec<_>>()
        );
    }
}

/// Several publishers, each on its own connection, send at once while several consumers of one
/// group (each on its own connection) share the topic: every task arrives exactly once.
pub async fn concurrent_publishers_and_subscribers<H: Harness>(h: &H) {
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 50;
    let cx = Ctx::new("concurrent_publishers_and_subscribers", h);
    let topic = cx.name("t");
    let group = cx.name("g");
    let consumers = if cx.caps().consumer_groups {
        3
    } else {
        eprintln!(
            "NOTE concurrent_publishers_and_subscribers: one consumer only (no consumer_groups)"
        );
        1
    };
    let batches: Vec<Vec<Task>> = (0..PUBLISHERS)
        .map(|p| cx.tasks(&format!("publisher {p}"), PER_PUBLISHER))
        .collect();
    let ledger = Arc::new(Ledger::new("concurrent_publishers_and_subscribers"));
    for batch in &batches {
        ledger.sent_all(ids(batch));
    }

    let mut subs = Vec::new();
    for c in 0..consumers {
        let bus = cx.connect().await;
        let sub = cx
            .subscribe_with(
                &bus,
                &topic,
                ConsumerOptions::group(&group).max_in_flight(8),
            )
            .await;
        subs.push(cx.spawn_consumer(sub, &ledger, format!("consumer {c}")));
    }
    let mut publishers = Vec::new();
    for batch in batches {
        let bus = cx.connect().await;
        let (topic, limits) = (topic.clone(), cx.limits);
        publishers.push(spawn(async move {
            for task in &batch {
                limits.ok("send a task", bus.send(&topic, task)).await;
            }
        }));
    }
    cx.join(publishers).await;
    let got = cx.join(subs).await;
    ledger.assert_exactly_once();
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    eprintln!("concurrent_publishers_and_subscribers: tasks per consumer {counts:?}");
}

/// Twenty topics at once on one connection, each with a consumer of its own: each gets exactly its
/// own tasks.
pub async fn many_topics<H: Harness>(h: &H) {
    const TOPICS: usize = 20;
    const PER_TOPIC: usize = 10;
    let cx = Ctx::new("many_topics", h);
    let bus = cx.connect().await;
    let topics: Vec<String> = (0..TOPICS).map(|t| cx.name(&format!("t{t}"))).collect();
    // Subscribing can take a broker round trip or a group join: open them all at once.
    let (cx, bus) = (&cx, &bus);
    let subs = futures::future::join_all(topics.iter().enumerate().map(|(t, topic)| async move {
        cx.subscribe(bus, topic, &cx.name(&format!("g{t}"))).await
    }))
    .await;
    let mut consumers = Vec::new();
    let mut sends = Vec::new();
    for (topic, sub) in topics.into_iter().zip(subs) {
        let tasks = cx.tasks(&topic, PER_TOPIC);
        let ledger = ledger_for(cx.case(), &topic, &tasks);
        consumers.push(cx.spawn_consumer(sub, &ledger, format!("consumer of {topic}")));
        sends.push((topic, tasks, ledger));
    }
    let all = futures::future::join_all(
        sends
            .iter()
            .map(|(topic, tasks, _)| cx.send(bus, topic, tasks)),
    );
    all.await;
    cx.join(consumers).await;
    for (_, _, ledger) in sends {
        ledger.assert_exactly_once();
    }
}

/// Two topics with the same group name, and a third nobody sends to: no task crosses over.
pub async fn topic_isolation<H: Harness>(h: &H) {
    let cx = Ctx::new("topic_isolation", h);
    let bus = cx.connect().await;
    let group = cx.name("shared-group-name");
    let (a, b, quiet) = (cx.name("a"), cx.name("b"), cx.name("quiet"));
    let tasks_a = cx.tasks("topic a", 20);
    let tasks_b = cx.tasks("topic b", 20);
    let ledger_a = ledger_for(cx.case(), "topic a", &tasks_a);
    let ledger_b = ledger_for(cx.case(), "topic b", &tasks_b);
    let sub_a = cx.subscribe(&bus, &a, &group).await;
    let sub_b = cx.subscribe(&bus, &b, &group).await;
    let mut sub_quiet = cx.subscribe(&bus, &quiet, &group).await;
    let consumers = vec![
        cx.spawn_consumer(sub_a, &ledger_a, "consumer of topic a"),
        cx.spawn_consumer(sub_b, &ledger_b, "consumer of topic b"),
    ];
    futures::join!(cx.send(&bus, &a, &tasks_a), cx.send(&bus, &b, &tasks_b));
    cx.join(consumers).await;
    ledger_a.assert_exactly_once();
    ledger_b.assert_exactly_once();
    let strays = cx.limits.strays(&mut sub_quiet).await;
    assert!(
        strays.is_empty(),
        "topic_isolation: a topic nobody sent to delivered {} tasks: {:?}",
        strays.len(),
        ids(&strays)
    );
}

/// A task of 1 MB and one over 64 KiB (with a large meta) travel intact, between small ones.
pub async fn large_payloads<H: Harness>(h: &H) {
    let cx = Ctx::new("large_payloads", h);
    let bus = cx.connect().await;
    let topic = cx.name("t");
    let sub = cx.subscribe(&bus, &topic, &cx.name("g")).await;
    let mut tasks = cx.tasks("small", 3);
    tasks.insert(1, task_of_wire_size(cx.case(), WIRE_1MB));
    tasks.insert(
        3,
        Task::new(cx.case(), big_info(100 * 1024)).meta("big", big_info(70 * 1024)),
    );
    let ledger = ledger_for(cx.case(), "large", &tasks);
    let consumer = cx.spawn_consumer(sub, &ledger, "the consumer");
    cx.send(&bus, &topic, &tasks).await;
    let got = cx.join(vec![consumer]).await.remove(0);
    ledger.assert_exactly_once();
    for sent in &tasks {
        let Some(back) = got.iter().find(|t| t.id == sent.id) else {
            continue;
        };
        assert!(
            back == sent,
            "large_payloads: task {} came back changed: info {} bytes (sent {}), meta {} bytes (sent {}), \
             same info: {}",
            sent.id,
            back.info.len(),
            sent.info.len(),
            back.meta.to_string().len(),
            sent.meta.to_string().len(),
            back.info == sent.info
        );
    }
}

/// The size of the largest task on the wire: 1 MB, under the 1 MiB that NATS's `max_payload` and
/// Kafka's `message.max.bytes` allow by default, with room for headers and record overhead.
const WIRE_1MB: usize = 1_000_000;

/// A task whose JSON is `size` bytes or a few less (escapes included).
fn task_of_wire_size(kind: &str, size: usize) -> Task {
    let mut task = Task::new(kind, big_info(size));
    loop {
        let over = task.to_json_bytes().len().saturating_sub(size);
        if over == 0 {
            break;
        }
        let mut end = task.info.len() - over;
        while !task.info.is_char_boundary(end) {
            end -= 1;
        }
        task.info.truncate(end);
    }
    task
}

/// `n` bytes of text with characters JSON and HTML treat specially.
fn big_info(n: usize) -> String {
    const PATTERN: &str = "s3://bucket/path?day=2024-01-02&x=<a>\"quoted\"\\é→0123456789";
    let mut s = String::with_capacity(n + PATTERN.len());
    while s.len() < n {
        s.push_str(PATTERN);
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// A finite consumer ends (`None`) at the end of what its topic holds: at once on an empty topic, and
/// after every task (a nacked one included) on a full one.
pub async fn finite_consumer_ends<H: Harness>(h: &H) {
    let cx = Ctx::new("finite_consumer_ends", h);
    if cx.skip(&[("end_of_input", cx.caps().end_of_input)]) {
        return;
    }
    let bus = cx.connect().await;
    let (empty, topic, group) = (cx.name("empty"), cx.name("t"), cx.name("g"));
    let mut sub = cx
        .subscribe_with(&bus, &empty, ConsumerOptions::group(&group).finite(true))
        .await;
    if let Some(r) = cx.limits.ok("the end of an empty topic", sub.next()).await {
        panic!(
            "finite_consumer_ends: an empty topic delivered task {:?}",
            r.task.id
        );
    }

    cx.declare_group(&bus, &topic, &group).await;
    let tasks = cx.tasks("finite", 20);
    cx.send(&bus, &topic, &tasks).await;
    let ledger = ledger_for(cx.case(), "acked", &tasks);
    let mut sub = cx
        .subscribe_with(&bus, &topic, ConsumerOptions::group(&group).finite(true))
        .await;
    let mut nacked = None;
    loop {
        let next = cx.limits.ok("the next task or the end", sub.next()).await;
        let Some(r) = next else { break };
        if nacked.is_none() && ledger.times_received(&r.task.id) == 0 && r.delivery_count() == 1 {
            nacked = Some(r.task.id.clone());
            cx.limits.ok("nack", r.nack(None)).await;
            continue;
        }
        ledger.received(&r.task.id);
        cx.limits.ok("ack", r.ack()).await;
    }
    ledger.assert_exactly_once();
    if let Some(r) = cx.limits.ok("next after the end", sub.next()).await {
        panic!(
            "finite_consumer_ends: task {:?} came after the end",
            r.task.id
        );
    }
}
