//! What is not acked comes back: after a nack (with or without a delay), across a close and reopen,
//! after a crash; and what is still being worked on does not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::conformance::support::{ids, ledger_for, Ctx};
use crate::conformance::Harness;
use crate::ConsumerOptions;

/// Every task nacked on its first delivery comes back once, with a delivery count of 2, and is then
/// acked and gone.
pub async fn nack_redelivers<H: Harness>(h: &H) {
    let cx = Ctx::new("nack_redelivers", h);
    let bus = cx.connect().await;
    let topic = cx.name("t");
    let mut sub = cx.subscribe(&bus, &topic, &cx.name("g")).await;
    let tasks = cx.tasks("nacked once", 10);
    let acked = ledger_for(cx.case(), "acked", &tasks);
    let first = ledger_for(cx.case(), "nacked", &tasks);
    cx.send(&bus, &topic, &tasks).await;
    while !acked.is_complete() {
        let r = cx
            .limits
            .next(
                &mut sub,
                &format!("the nacked tasks to come back; {}", acked.report()),
            )
            .await;
        let id = r.task.id.clone();
        if first.times_received(&id) == 0 {
            first.received(&id);
            assert_eq!(
                r.delivery_count(),
                1,
                "nack_redelivers: first delivery of {id}"
            );
            cx.limits.ok("nack", r.nack(None)).await;
        } else {
            acked.received(&id);
            assert_eq!(
                r.delivery_count(),
                2,
                "nack_redelivers: delivery of {id} after one nack"
            );
            cx.limits.ok("ack", r.ack()).await;
        }
    }
    for task in cx.limits.strays(&mut sub).await {
        acked.received(&task.id);
    }
    first.assert_exactly_once();
    acked.assert_exactly_once();
}

/// A task nacked with a delay stays away at least that long while the other tasks keep flowing,
/// then comes back.
pub async fn nack_with_delay<H: Harness>(h: &H) {
    let cx = Ctx::new("nack_with_delay", h);
    if cx.skip(&[("nack_delay", cx.caps().nack_delay)]) {
        return;
    }
    let delay = (h.lease() / 2).clamp(Duration::from_millis(300), Duration::from_secs(3));
    let bus = cx.connect().await;
    let topic = cx.name("t");
    let mut sub = cx.subscribe(&bus, &topic, &cx.name("g")).await;
    let tasks = cx.tasks("delayed", 5);
    let acked = ledger_for(cx.case(), "acked", &tasks);
    cx.send(&bus, &topic, &tasks).await;

    let r = cx.limits.next(&mut sub, "the first task").await;
    let delayed = r.task.id.clone();
    let nacked_at = Instant::now();
    cx.limits.ok("nack with a delay", r.nack(Some(delay))).await;
    let mut before_return = 0;
    while !acked.is_complete() {
        let r = cx
            .limits
            .next(&mut sub, &format!("the tasks; {}", acked.report()))
            .await;
        let id = r.task.id.clone();
        if id == delayed {
            let away = nacked_at.elapsed();
            // A little slack for timers that round down.
            assert!(
                away + delay / 20 >= delay,
                "nack_with_delay: task {id} came back after {away:?}, before its delay of {delay:?}"
            );
            assert_eq!(
                r.delivery_count(),
                2,
                "nack_with_delay: delivery count of {id} after a nack"
            );
        } else {
            before_return += usize::from(acked.times_received(&delayed) == 0);
        }
        acked.received(&id);
        cx.limits.ok("ack", r.ack()).await;
    }
    for task in cx.limits.strays(&mut sub).await {
        acked.received(&task.id);
    }
    acked.assert_exactly_once();
    eprintln!(
        "nack_with_delay: {before_return} of 4 other tasks arrived while one was delayed {delay:?}"
    );
}

/// A consumer that acks some tasks, holds one, closes, drains and acks the held one after closing,
/// then a reopened consumer (same connection, then another one) gets the rest: nothing is lost and
/// nothing acked comes again.
pub async fn close_and_reopen_loses_nothing<H: Harness>(h: &H) {
    let cx = Ctx::new("close_and_reopen_loses_nothing", h);
    let bus = cx.connect().await;
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let mut sub = cx.subscribe(&bus, &topic, &group).await;
    let first = cx.tasks("before close", 30);
    let second = cx.tasks("while closed", 20);
    let ledger = ledger_for(cx.case(), "acked", &first);
    ledger.sent_all(ids(&second));
    cx.send(&bus, &topic, &first).await;

    for _ in 0..10 {
        let r = cx.limits.next(&mut sub, "a task before closing").await;
        ledger.received(&r.task.id);
        cx.limits.ok("ack", r.ack()).await;
    }
    let held = cx
        .limits
        .next(&mut sub, "a task to hold across the close")
        .await;
    cx.limits.ok("close the consumer", sub.close()).await;
    // What was fetched before the close is still handed out, then the consumer ends.
    while let Some(r) = cx
        .limits
        .ok("the end of a closed consumer", sub.next())
        .await
    {
        ledger.received(&r.task.id);
        cx.limits
            .ok("ack a task drained after close", r.ack())
            .await;
    }
    ledger.received(&held.task.id);
    cx.limits
        .ok("ack a delivery after its consumer closed", held.ack())
        .await;
    drop(sub);

    cx.send(&bus, &topic, &second).await;
    let mut sub = cx.subscribe(&bus, &topic, &group).await;
    for _ in 0..5 {
        let r = cx.limits.next(&mut sub, "a task after reopening").await;
        ledger.received(&r.task.id);
        cx.limits.ok("ack", r.ack()).await;
    }
    drop(sub); // dropped, not closed, with everything acked

    let other = cx.connect().await;
    let sub = cx.subscribe(&other, &topic, &group).await;
    let rest = cx.spawn_consumer(sub, &ledger, "consumer on another connection");
    cx.join(vec![rest]).await;
    ledger.assert_exactly_once();
}

/// A consumer that crashes (its deliveries, consumer and connection dropped, nothing closed) holding
/// unacked tasks: another consumer of the group gets them after the lease, with a delivery count
/// above 1, and gets none of those the crashed one acked.
pub async fn crash_without_close_redelivers<H: Harness>(h: &H) {
    let cx = Ctx::new("crash_without_close_redelivers", h);
    if cx.skip(&[("lease_redelivery", cx.caps().lease_redelivery)]) {
        return;
    }
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let tasks = cx.tasks("crash", 20);
    let ledger = ledger_for(cx.case(), "acked", &tasks);
    let crashing = cx.connect().await;
    let mut sub = cx.subscribe(&crashing, &topic, &group).await;
    cx.send(&crashing, &topic, &tasks).await;
    let mut abandoned = Vec::new();
    for i in 0..5 {
        let r = cx.limits.next(&mut sub, "a task before the crash").await;
        if i < 2 {
            ledger.received(&r.task.id);
            cx.limits.ok("ack", r.ack()).await;
        } else {
            abandoned.push(r);
        }
    }
    let abandoned_ids: Vec<String> = abandoned.iter().map(|r| r.task.id.clone()).collect();
    drop(abandoned);
    drop(sub);
    drop(crashing);

    let survivor = cx.connect().await;
    let mut sub = cx.subscribe(&survivor, &topic, &group).await;
    let started = Instant::now();
    let mut counts = HashMap::new();
    while !ledger.is_complete() {
        let r = cx
            .limits
            .next(
                &mut sub,
                &format!("the rest after a crash; {}", ledger.report()),
            )
            .await;
        counts.insert(r.task.id.clone(), r.delivery_count());
        ledger.received(&r.task.id);
        cx.limits.ok("ack", r.ack()).await;
    }
    for task in cx.limits.strays(&mut sub).await {
        ledger.received(&task.id);
    }
    ledger.assert_exactly_once();
    for id in &abandoned_ids {
        let count = counts.get(id).copied().unwrap_or(0);
        assert!(
            count >= 2,
            "crash_without_close_redelivers: task {id} was handed to the crashed consumer, yet its \
             redelivery has delivery count {count}; it must count that first delivery"
        );
    }
    eprintln!(
        "crash_without_close_redelivers: everything back {:?} after the crash (lease {:?})",
        started.elapsed(),
        h.lease()
    );
}

/// A delivery whose consumer keeps calling `in_progress` is not handed to another member of the
/// group, even well past the lease; once acked it is gone.
pub async fn in_progress_keeps_lease<H: Harness>(h: &H) {
    let cx = Ctx::new("in_progress_keeps_lease", h);
    let caps = cx.caps();
    if cx.skip(&[
        ("lease_redelivery", caps.lease_redelivery),
        ("in_progress", caps.in_progress),
    ]) {
        return;
    }
    let lease = h.lease();
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let worker_bus = cx.connect().await;
    let other_bus = cx.connect().await;
    let options = ConsumerOptions::group(&group).max_in_flight(1);
    let mut worker = cx
        .subscribe_with(&worker_bus, &topic, options.clone())
        .await;
    let tasks = cx.tasks("long work", 1);
    let ledger = ledger_for(cx.case(), "acked", &tasks);
    cx.send(&worker_bus, &topic, &tasks).await;
    let r = cx.limits.next(&mut worker, "the task").await;
    let mut other = cx.subscribe_with(&other_bus, &topic, options).await;

    let hold = lease * 2 + lease / 2;
    let keep_alive = async {
        let until = Instant::now() + hold;
        while Instant::now() < until {
            tokio::time::sleep(lease / 4).await;
            cx.limits
                .ok("extend the lease (in_progress)", r.in_progress())
                .await;
        }
    };
    tokio::select! {
        () = keep_alive => {}
        next = other.next() => match next {
            Ok(Some(again)) => panic!(
                "in_progress_keeps_lease: task {} was handed to another consumer {:?} after the first \
                 (lease {lease:?}) although in_progress was called every {:?}",
                again.task.id, hold, lease / 4
            ),
            Ok(None) => panic!("in_progress_keeps_lease: the other consumer ended"),
            Err(e) => panic!("in_progress_keeps_lease: the other consumer failed: {e}"),
        },
    }
    ledger.received(&r.task.id);
    cx.limits.ok("ack after a long time", r.ack()).await;
    for task in cx.limits.strays(&mut other).await {
        ledger.received(&task.id);
    }
    for task in cx.limits.strays(&mut worker).await {
        ledger.received(&task.id);
    }
    ledger.assert_exactly_once();
}
