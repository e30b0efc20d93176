//! Nothing is dropped silently: what cannot be decoded, or comes back too often, goes to the
//! dead-letter topic with the reason, and the subscription carries on.

use std::collections::HashMap;
use std::sync::Arc;

use crate::conformance::support::{consume_until, ledger_for, spawn, Ctx, Limits};
use crate::conformance::{Harness, Ledger};
use crate::{Consumer, DeadLetter, Task};

/// Reads the dead-letter topic until `ledger` (keyed by `key`) is complete, then listens a little
/// longer for duplicates; every entry is acked. Returns the entries.
async fn read_dead_letters(
    limits: Limits,
    consumer: &mut Box<dyn Consumer>,
    ledger: &Ledger,
    key: impl Fn(&DeadLetter) -> String,
) -> Vec<DeadLetter> {
    let mut letters = Vec::new();
    let mut take = |delivery: crate::Delivery| {
        let letter = DeadLetter::from_json(&delivery.payload).unwrap_or_else(|e| {
            panic!(
                "{}: an entry of the dead-letter topic is not a DeadLetter ({e}): {}",
                limits.case,
                String::from_utf8_lossy(&delivery.payload)
            )
        });
        ledger.received(&key(&letter));
        letters.push(letter);
        delivery
    };
    while !ledger.is_complete() {
        let what = format!("the dead letters; {}", ledger.report());
        match limits.ok(&what, consumer.next()).await {
            Some(d) => limits.ok("ack a dead letter", take(d).ack()).await,
            None => panic!(
                "{}: the dead-letter consumer ended; {}",
                limits.case,
                ledger.report()
            ),
        }
    }
    while let Ok(next) = tokio::time::timeout(limits.settle, consumer.next()).await {
        match next {
            Ok(Some(d)) => limits.ok("ack a dead letter", take(d).ack()).await,
            Ok(None) => break,
            Err(e) => panic!("{}: error reading dead letters: {e}", limits.case),
        }
    }
    letters
}

/// With `max_deliveries=3`, a task nacked every time is delivered exactly 3 times (counts 1, 2, 3),
/// then lands on the dead-letter topic once, with the reason, a delivery count of 4 and the task as
/// it was sent.
pub async fn redelivery_limit_dead_letters<H: Harness>(h: &H) {
    const MAX: u32 = 3;
    let cx = Ctx::new("redelivery_limit_dead_letters", h);
    let dead_topic = cx.name("dead");
    let bus = cx
        .connect_with(|o| {
            o.max_deliveries = MAX;
            o.dead_letter = dead_topic.clone();
        })
        .await;
    let topic = cx.name("t");
    let group = cx.name("g");
    let mut dead = cx
        .raw_consumer(&bus, &dead_topic, &cx.name("dl-reader"))
        .await;
    let mut sub = cx.subscribe(&bus, &topic, &group).await;
    let tasks = cx.tasks("poison", 5);
    let dead_ledger = ledger_for(cx.case(), "dead letters", &tasks);
    cx.send(&bus, &topic, &tasks).await;

    let limits = cx.limits;
    let nacker = {
        let dead_ledger = dead_ledger.clone();
        spawn(async move {
            let mut counts: HashMap<String, Vec<u32>> = HashMap::new();
            loop {
                let next = tokio::select! {
                    biased;
                    () = dead_ledger.all_received() => break,
                    next = sub.next() => next,
                };
                let r = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => panic!("{}: the subscription ended", limits.case),
                    Err(e) => panic!("{}: error receiving: {e}", limits.case),
                };
                let seen = counts.entry(r.task.id.clone()).or_default();
                seen.push(r.delivery_count());
                assert!(
                    seen.len() <= MAX as usize + 2,
                    "{}: task {} was delivered {} times with max_deliveries={MAX} and never \
                     dead-lettered; its delivery counts were {seen:?}",
                    limits.case,
                    r.task.id,
                    seen.len()
                );
                limits.ok("nack", r.nack(None)).await;
            }
            let strays = limits.strays(&mut sub).await;
            (counts, strays)
        })
    };
    let letters = read_dead_letters(cx.limits, &mut dead, &dead_ledger, |l| {
        task_id(cx.case(), l)
    })
    .await;
    let (counts, strays) = cx.join(vec![nacker]).await.remove(0);
    dead_ledger.assert_exactly_once();
    assert!(
        strays.is_empty(),
        "redelivery_limit_dead_letters: {} tasks came back after being dead-lettered",
        strays.len()
    );
    for task in &tasks {
        let seen = counts.get(&task.id).cloned().unwrap_or_default();
        assert_eq!(
            seen,
            (1..=MAX).collect::<Vec<_>>(),
            "redelivery_limit_dead_letters: delivery counts of task {} with max_deliveries={MAX}",
            task.id
        );
    }
    for letter in &letters {
        let sent = tasks.iter().find(|t| t.id == task_id(cx.case(), letter));
        assert_eq!(
            (letter.topic.as_str(), letter.group.as_str()),
            (topic.as_str(), group.as_str())
        );
        assert_eq!(letter.delivery_count, MAX + 1, "dead letter {letter:?}");
        assert!(
            letter.reason.contains("max_deliveries=3"),
            "reason: {:?}",
            letter.reason
        );
        assert_eq!(
            Some(letter.payload.clone()),
            sent.map(Task::to_json),
            "dead letter payload"
        );
    }
}

fn task_id(case: &str, letter: &DeadLetter) -> String {
    match Task::from_json(letter.payload.as_bytes()) {
        Ok(task) => task.id,
        Err(e) => panic!("{case}: the payload of dead letter {letter:?} is not the task sent: {e}"),
    }
}

/// Payloads that are not tasks, between valid tasks: each lands on the dead-letter topic once, with
/// a reason naming the problem, and every valid task is still delivered.
pub async fn undecodable_dead_letters<H: Harness>(h: &H) {
    let cx = Ctx::new("undecodable_dead_letters", h);
    let dead_topic = cx.name("dead");
    let bus = cx
        .connect_with(|o| o.dead_letter = dead_topic.clone())
        .await;
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let mut dead = cx
        .raw_consumer(&bus, &dead_topic, &cx.name("dl-reader"))
        .await;
    let sub = cx.subscribe(&bus, &topic, &group).await;

    // (payload, what the reason must mention)
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "invalid task"),
        (b"[1,2,3]".to_vec(), "task object"),
        (br#"{"info":"no type here"}"#.to_vec(), "type"),
        (br#"{"type":"x","created":"yesterday"}"#.to_vec(), "created"),
        (br#"{"type":"x","result":"done"}"#.to_vec(), "result"),
        (br#"{"type":"x","id":7}"#.to_vec(), "id"),
        (b"\xff\xfe not UTF-8".to_vec(), "invalid task"),
    ];
    let good = cx.tasks("good", bad.len() + 1);
    let tasks = ledger_for(cx.case(), "valid tasks", &good);
    let letters = Arc::new(Ledger::new(format!("{}/dead letters", cx.case())));
    letters.sent_all(
        bad.iter()
            .map(|(p, _)| String::from_utf8_lossy(p).into_owned()),
    );
    // The subscription goes on until the dead letters are out too: it is what writes them.
    let until = vec![tasks.clone(), letters.clone()];
    let who = "the subscription".to_owned();
    let consumer = spawn(consume_until(sub, tasks.clone(), until, cx.limits, who));
    for (i, task) in good.iter().enumerate() {
        cx.limits.ok("send a task", bus.send(&topic, task)).await;
        if let Some((payload, _)) = bad.get(i) {
            cx.limits
                .ok("send raw bytes", bus.send_raw(&topic, payload.clone()))
                .await;
        }
    }
    let got = read_dead_letters(cx.limits, &mut dead, &letters, |l| l.payload.clone()).await;
    cx.join(vec![consumer]).await;
    tasks.assert_exactly_once();
    letters.assert_exactly_once();
    for letter in &got {
        let (_, mention) = bad
            .iter()
            .find(|(p, _)| String::from_utf8_lossy(p) == letter.payload)
            .unwrap_or_else(|| {
                panic!("undecodable_dead_letters: unexpected dead letter {letter:?}")
            });
        assert!(
            letter.reason.contains(mention),
            "undecodable_dead_letters: the reason for {:?} should mention {mention:?}: {:?}",
            letter.payload,
            letter.reason
        );
        assert_eq!(
            (letter.topic.as_str(), letter.group.as_str()),
            (topic.as_str(), group.as_str())
        );
        assert_eq!(letter.delivery_count, 1, "dead letter {letter:?}");
    }
    own_dead_letter_topic(&cx).await;
}

/// The bus's own dead-letter topic (as the harness configures it: `deadletter` unless its URL says
/// otherwise) gets the entry too. Entries of other cases and earlier runs there are passed over.
async fn own_dead_letter_topic<H: Harness>(cx: &Ctx<'_, H>) {
    let bus = cx.connect().await;
    let dead_topic = bus.options().dead_letter.clone();
    let (topic, group) = (cx.name("own-dl"), cx.name("own-dl-g"));
    let reader = cx.name("own-dl-reader");
    let mut dead = cx.raw_consumer(&bus, &dead_topic, &reader).await;
    let sub = cx.subscribe(&bus, &topic, &group).await;
    let good = cx.tasks("good", 1);
    let tasks = ledger_for(cx.case(), "valid task", &good);
    let bad = format!(
        r#"{{"type":"x","started":"not a time","id":"{}"}}"#,
        cx.name("bad")
    );
    let letters = Arc::new(Ledger::new(format!("{}/{dead_topic}", cx.case())));
    letters.sent(bad.clone());
    let until = vec![tasks.clone(), letters.clone()];
    let who = "the subscription".to_owned();
    let consumer = spawn(consume_until(sub, tasks.clone(), until, cx.limits, who));
    cx.limits
        .ok("send raw bytes", bus.send_raw(&topic, bad.clone()))
        .await;
    cx.send(&bus, &topic, &good).await;
    let mut passed_over = 0;
    while !letters.is_complete() {
        let what = format!("a dead letter from {topic:?} on {dead_topic:?}");
        let Some(d) = cx.limits.ok(&what, dead.next()).await else {
            panic!("{}: the consumer of {dead_topic:?} ended", cx.case());
        };
        match DeadLetter::from_json(&d.payload) {
            Ok(letter) if letter.topic == topic => {
                assert_eq!(letter.group, group, "dead letter {letter:?}");
                assert!(
                    letter.reason.contains("`started`"),
                    "reason: {:?}",
                    letter.reason
                );
                letters.received(&letter.payload);
            }
            _ => passed_over += 1,
        }
        cx.limits.ok("ack a dead letter", d.ack()).await;
    }
    cx.join(vec![consumer]).await;
    tasks.assert_exactly_once();
    letters.assert_exactly_once();
    if passed_over > 0 {
        eprintln!(
            "undecodable_dead_letters: passed over {passed_over} older entries of {dead_topic:?}"
        );
    }
}
