//! The broker restarts while tasks are being sent and received: nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::conformance::support::{ids, spawn, Ctx, Limits};
use crate::conformance::{Harness, Ledger};
use crate::{Bus, Subscription, Task};

/// How long to back off after an error while the broker is away.
const BACKOFF: Duration = Duration::from_millis(100);

/// A publisher and a consumer run while the harness restarts the broker. Sends that fail are retried;
/// the consumer's errors are waited out. Every task arrives; duplicates (a send or an ack that failed
/// but had reached the broker) are allowed and reported.
pub async fn broker_restart<H: Harness>(h: &H) {
    const TASKS: usize = 200;
    let mut cx = Ctx::new("broker_restart", h);
    if cx.skip(&[("persistent", cx.caps().persistent)]) {
        return;
    }
    // A restart can take a while (a JVM, a log replay): allow a minute more than other cases.
    cx.limits.wait += Duration::from_secs(60);
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let tasks = cx.tasks("across a restart", TASKS);
    let ledger = Arc::new(Ledger::new("broker_restart"));
    ledger.sent_all(ids(&tasks));
    let sub_bus = cx.connect().await;
    let sub = cx.subscribe(&sub_bus, &topic, &group).await;
    let consumer = spawn(consume_through_errors(sub, ledger.clone(), cx.limits));
    let halfway = Arc::new(Notify::new());
    let pub_bus = cx.connect().await;
    let publisher = spawn(publish_through_errors(
        pub_bus,
        topic.clone(),
        tasks,
        halfway.clone(),
        cx.limits,
    ));

    cx.limits
        .within("half the tasks to be sent", halfway.notified())
        .await;
    let restarted = cx
        .limits
        .within("the broker to restart", h.restart_broker())
        .await;
    if let Err(reason) = restarted {
        eprintln!("SKIPPED broker_restart: needs a harness that can restart its broker ({reason})");
        return; // dropping the publisher and the consumer aborts them
    }
    let sends = cx.join(vec![publisher]).await.remove(0);
    let errors = cx.join(vec![consumer]).await.remove(0);
    let report = ledger.assert_at_least_once();
    eprintln!(
        "broker_restart: {TASKS} tasks, {sends} send attempts, {} duplicate receipts, {errors} consumer \
         errors",
        report.extra_deliveries()
    );
}

/// Sends `tasks` one by one, retrying each until the broker takes it; wakes `halfway` after half.
/// Returns how many attempts it took.
async fn publish_through_errors(
    bus: Bus,
    topic: String,
    tasks: Vec<Task>,
    halfway: Arc<Notify>,
    limits: Limits,
) -> usize {
    let mut attempts = 0;
    for (i, task) in tasks.iter().enumerate() {
        if i == tasks.len() / 2 {
            halfway.notify_one();
        }
        let send = async {
            loop {
                attempts += 1;
                match bus.send(&topic, task).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "broker_restart: send failed, retrying");
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            }
        };
        limits
            .within(
                &format!("task {i} to be sent (retrying through the restart)"),
                send,
            )
            .await;
    }
    attempts
}

/// Receives and acks until `ledger` is complete, waiting out errors; returns how many errors it saw.
async fn consume_through_errors(
    mut sub: Subscription,
    ledger: Arc<Ledger>,
    limits: Limits,
) -> usize {
    let mut errors = 0;
    let receive = async {
        loop {
            let next = tokio::select! {
                biased;
                () = ledger.all_received() => break,
                next = sub.next() => next,
            };
            match next {
                Ok(Some(r)) => {
                    let (task, delivery) = r.into_parts();
                    ledger.received(&task.id);
                    if let Err(e) = delivery.ack().await {
                        // The task comes again; the ledger will count it as a duplicate.
                        tracing::debug!(error = %e, "broker_restart: ack failed");
                        errors += 1;
                    }
                }
                Ok(None) => panic!(
                    "broker_restart: the subscription ended (Ok(None)) during a broker restart; a \
                     consumer must reconnect or return errors until the broker is back: {}",
                    ledger.report()
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "broker_restart: receive failed");
                    errors += 1;
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    };
    if tokio::time::timeout(limits.wait, receive).await.is_err() {
        panic!(
            "broker_restart: timed out after {:?} waiting for every task across the restart ({errors} \
             errors): {}",
            limits.wait,
            ledger.report()
        );
    }
    for task in limits.strays(&mut sub).await {
        ledger.received(&task.id);
    }
    errors
}
