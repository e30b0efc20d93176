//! Consumer groups: each group gets every task; the members of one group share them.

use std::sync::Arc;

use tokio::sync::Barrier;

use crate::conformance::support::{consume, ledger_for, spawn, Ctx};
use crate::conformance::Harness;
use crate::ConsumerOptions;

/// Three groups on one topic, each on its own connection: each gets every task exactly once.
pub async fn each_group_gets_all<H: Harness>(h: &H) {
    let cx = Ctx::new("each_group_gets_all", h);
    if cx.skip(&[("consumer_groups", cx.caps().consumer_groups)]) {
        return;
    }
    let topic = cx.name("t");
    let tasks = cx.tasks("for every group", 30);
    let mut ledgers = Vec::new();
    let mut consumers = Vec::new();
    for g in 0..3 {
        let group = cx.name(&format!("g{g}"));
        let ledger = ledger_for(cx.case(), &group, &tasks);
        let bus = cx.connect().await;
        let sub = cx.subscribe(&bus, &topic, &group).await;
        consumers.push(cx.spawn_consumer(sub, &ledger, format!("consumer of group {g}")));
        ledgers.push(ledger);
    }
    let bus = cx.connect().await;
    cx.send(&bus, &topic, &tasks).await;
    cx.join(consumers).await;
    for ledger in ledgers {
        ledger.assert_exactly_once();
    }
}

/// Three members of one group, each on its own connection: while each holds one unacked task, the
/// others still get tasks (the group shares rather than piling on one member), and together they
/// receive every task exactly once.
pub async fn group_members_share<H: Harness>(h: &H) {
    const MEMBERS: usize = 3;
    let cx = Ctx::new("group_members_share", h);
    if cx.skip(&[("consumer_groups", cx.caps().consumer_groups)]) {
        return;
    }
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let tasks = cx.tasks("shared", 30);
    let ledger = ledger_for(cx.case(), "group", &tasks);
    let barrier = Arc::new(Barrier::new(MEMBERS));
    let mut members = Vec::new();
    for m in 0..MEMBERS {
        let bus = cx.connect().await;
        let options = ConsumerOptions::group(&group).max_in_flight(1);
        let mut sub = cx.subscribe_with(&bus, &topic, options).await;
        let (ledger, barrier, limits) = (ledger.clone(), barrier.clone(), cx.limits);
        members.push(spawn(async move {
            let who = format!("member {m}");
            let what = format!("{who}'s first task while the other members hold theirs unacked");
            let first = limits.next(&mut sub, &what).await;
            ledger.received(&first.task.id);
            limits
                .within(
                    &format!("{who}: every member to get a task"),
                    barrier.wait(),
                )
                .await;
            limits.ok("ack", first.ack()).await;
            let rest = consume(sub, ledger, limits, who).await;
            rest.len() + 1
        }));
    }
    let bus = cx.connect().await;
    cx.send(&bus, &topic, &tasks).await;
    let counts = cx.join(members).await;
    ledger.assert_exactly_once();
    eprintln!("group_members_share: tasks per member {counts:?}");
}
