//! The broker restarts while tasks are being sent and received: nothing is lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conformance::support::{ids, spawn, Ctx, Limits};
use crate::conformance::{Harness, Ledger};
use crate::{Bus, Subscription, Task};

/// How long to back off after an error while the broker is away.
const BACKOFF: Duration = Duration::from_millis(100);

/// Tasks per phase: before, during and after the restart.
const PER_PHASE: usize = 100;

/// One consumer and one publisher, each on a connection opened before the restart, go on through
/// it: tasks sent before (half of them received before the restart begins), tasks sent at a steady
/// pace while the harness restarts the broker, and tasks sent once it is back. Sends that fail are
/// retried; the consumer's errors are waited out. Every task arrives; duplicates (a send or an ack
/// that failed but had reached the broker) are allowed and reported.
pub async fn broker_restart<H: Harness>(h: &H) {
    let mut cx = Ctx::new("broker_restart", h);
    if cx.skip(&[("persistent", cx.caps().persistent)]) {
        return;
    }
    // A restart can take a while (a JVM, a log replay): allow a minute more than other cases.
    cx.limits.wait += Duration::from_secs(60);
    let limits = cx.limits;
    let (topic, group) = (cx.name("t"), cx.name("g"));
    let phases = [
        cx.tasks("before", PER_PHASE),
        cx.tasks("during", PER_PHASE),
        cx.tasks("after", PER_PHASE),
    ];
    let ledger = Arc::new(Ledger::new("broker_restart"));
    for phase in &phases {
        ledger.sent_all(ids(phase));
    }
    let [before, during, after] = phases;
    let errors = Arc::new(AtomicUsize::new(0));
    let sub_bus = cx.connect().await;
    let sub = cx.subscribe(&sub_bus, &topic, &group).await;
    let consumer = spawn(consume_through_errors(
        sub,
        ledger.clone(),
        errors.clone(),
        limits,
    ));
    let bus = cx.connect().await;

    let attempts = publish_through_errors(&bus, &topic, &before, Duration::ZERO, limits).await;
    let half = async {
        while ledger.report().deliveries < PER_PHASE / 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    limits
        .within("half the first tasks to arrive before the restart", half)
        .await;

    // Paced so that sends go on while the broker is away, however long the restart takes.
    let pace = Duration::from_millis(20);
    let sender = {
        let (bus, topic) = (bus.clone(), topic.clone());
        spawn(async move { publish_through_errors(&bus, &topic, &during, pace, limits).await })
    };
    let started = Instant::now();
    let restarted = limits
        .within("the broker to restart", h.restart_broker())
        .await;
    if let Err(reason) = restarted {
        eprintln!("SKIPPED broker_restart: needs a harness that can restart its broker ({reason})");
        return; // dropping the sender and the consumer aborts them
    }
    let took = started.elapsed();
    let attempts = attempts
        + cx.join(vec![sender]).await.remove(0)
        + publish_through_errors(&bus, &topic, &after, Duration::ZERO, limits).await;
    cx.join(vec![consumer]).await;
    let report = ledger.assert_at_least_once();
    eprintln!(
        "broker_restart: the restart took {took:?}; {} tasks, {attempts} send attempts, {} duplicate \
         receipts, {} consumer errors",
        report.sent,
        report.extra_deliveries(),
        errors.load(Ordering::Relaxed)
    );
}

/// Sends `tasks` one by one, `pace` apart, retrying each until the broker takes it. Returns how many
/// attempts it took.
async fn publish_through_errors(
    bus: &Bus,
    topic: &str,
    tasks: &[Task],
    pace: Duration,
    limits: Limits,
) -> usize {
    let mut attempts = 0;
    for task in tasks {
        tokio::time::sleep(pace).await;
        let send = async {
            loop {
                attempts += 1;
                match bus.send(topic, task).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "broker_restart: send failed, retrying");
                        tokio::time::sleep(BACKOFF).await;
                    }
                }
            }
        };
        let what = format!(
            "task {:?} ({}) to be sent, retrying through the restart",
            task.id, task.info
        );
        limits.within(&what, send).await;
    }
    attempts
}

/// Receives and acks until `ledger` is complete, waiting out errors (counted in `errors`).
async fn consume_through_errors(
    mut sub: Subscription,
    ledger: Arc<Ledger>,
    errors: Arc<AtomicUsize>,
    limits: Limits,
) {
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
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => panic!(
                    "broker_restart: the subscription ended (Ok(None)) during a broker restart; a \
                     consumer must reconnect or return errors until the broker is back: {}",
                    ledger.report()
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "broker_restart: receive failed");
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    };
    if tokio::time::timeout(limits.wait, receive).await.is_err() {
        panic!(
            "broker_restart: timed out after {:?} waiting for every task across the restart ({} \
             errors): {}",
            limits.wait,
            errors.load(Ordering::Relaxed),
            ledger.report()
        );
    }
    for task in limits.strays(&mut sub).await {
        ledger.received(&task.id);
    }
}
