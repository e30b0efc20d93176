//! What the cases share: unique names, tasks, bounded waits and a consumer loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Harness, Ledger};
use crate::{
    Bus, BusOptions, Capabilities, Consumer, ConsumerOptions, Received, Subscription, Task,
};

/// The time limits of one case, small enough to copy into the tasks it spawns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The case's name, for messages.
    pub(crate) case: &'static str,
    /// The longest any one wait may take before the case fails.
    pub(crate) wait: Duration,
    /// How long to keep listening once everything arrived, to catch duplicates and strays.
    pub(crate) settle: Duration,
}

impl Limits {
    /// Awaits `fut` for at most [`Limits::wait`]; a timeout fails the case naming `what`.
    pub(crate) async fn within<T>(&self, what: &str, fut: impl Future<Output = T>) -> T {
        match tokio::time::timeout(self.wait, fut).await {
            Ok(v) => v,
            Err(_) => panic!(
                "{}: timed out after {:?} waiting for {what}",
                self.case, self.wait
            ),
        }
    }

    /// The next task of `sub`; fails the case on an error, an end or a timeout.
    pub(crate) async fn next(&self, sub: &mut Subscription, what: &str) -> Received {
        match self.within(what, sub.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!(
                "{}: the subscription ended while waiting for {what}",
                self.case
            ),
            Err(e) => panic!("{}: error while waiting for {what}: {e}", self.case),
        }
    }

    /// Listens to `sub` for [`Limits::settle`] and returns (acked) whatever arrives, which should be
    /// nothing.
    pub(crate) async fn strays(&self, sub: &mut Subscription) -> Vec<Task> {
        let mut strays = Vec::new();
        while let Ok(next) = tokio::time::timeout(self.settle, sub.next()).await {
            match next {
                Ok(Some(r)) => {
                    let (task, delivery) = r.into_parts();
                    self.ok("ack a stray task", delivery.ack()).await;
                    strays.push(task);
                }
                Ok(None) => break,
                Err(e) => panic!("{}: error while listening for strays: {e}", self.case),
            }
        }
        strays
    }

    /// Awaits a bus call within the limit and fails the case on its error.
    pub(crate) async fn ok<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> T {
        match self.within(what, fut).await {
            Ok(v) => v,
            Err(e) => panic!("{}: cannot {what}: {e}", self.case),
        }
    }
}

/// One run of one case: the harness, unique names and limits.
pub(crate) struct Ctx<'h, H> {
    pub(crate) h: &'h H,
    pub(crate) limits: Limits,
    uid: String,
}

impl<'h, H: Harness> Ctx<'h, H> {
    pub(crate) fn new(case: &'static str, h: &'h H) -> Self {
        let wait = h.lease() * 4 + Duration::from_secs(10);
        let uid = uuid::Uuid::new_v4().simple().to_string();
        Ctx {
            h,
            limits: Limits {
                case,
                wait,
                settle: h.settle(),
            },
            uid: uid[..12].to_owned(),
        }
    }

    pub(crate) fn case(&self) -> &'static str {
        self.limits.case
    }

    pub(crate) fn caps(&self) -> Capabilities {
        self.h.capabilities()
    }

    /// Prints `SKIPPED <case>: needs <capability>` and returns true when the harness lacks one of `needs`.
    pub(crate) fn skip(&self, needs: &[(&str, bool)]) -> bool {
        self.skip_part(self.case(), needs)
    }

    /// Like [`Ctx::skip`] for one part of the case, named `part`.
    pub(crate) fn skip_part(&self, part: &str, needs: &[(&str, bool)]) -> bool {
        match needs.iter().find(|(_, has)| !has) {
            Some((capability, _)) => {
                eprintln!("SKIPPED {part}: needs {capability}");
                true
            }
            None => false,
        }
    }

    /// A topic or group name unique to this run: `cf-<case>-<label>-<uid>`.
    pub(crate) fn name(&self, label: &str) -> String {
        format!("cf-{}-{label}-{}", self.case().replace('_', "-"), self.uid)
    }

    /// A new connection, as another process would open it.
    pub(crate) async fn connect(&self) -> Bus {
        self.limits
            .within("a connection from the harness", self.h.connect())
            .await
    }

    /// A new connection whose common options are changed by `change` (a dead-letter topic of the
    /// case's own, a lower redelivery limit).
    pub(crate) async fn connect_with(&self, change: impl FnOnce(&mut BusOptions)) -> Bus {
        let bus = self.connect().await;
        let mut options = bus.options().clone();
        change(&mut options);
        Bus::from_backend(bus.backend().clone(), options, bus.url())
    }

    /// `n` new tasks with fresh ids; `info` says which case, label and number.
    pub(crate) fn tasks(&self, label: &str, n: usize) -> Vec<Task> {
        (0..n)
            .map(|i| Task::new(self.case(), format!("{label} #{i}")).meta("case", self.case()))
            .collect()
    }

    pub(crate) async fn send(&self, bus: &Bus, topic: &str, tasks: &[Task]) {
        let what = format!("send {} tasks to {topic:?}", tasks.len());
        self.limits.ok(&what, bus.send_all(topic, tasks, 32)).await;
    }

    pub(crate) async fn subscribe(&self, bus: &Bus, topic: &str, group: &str) -> Subscription {
        self.subscribe_with(bus, topic, ConsumerOptions::group(group))
            .await
    }

    pub(crate) async fn subscribe_with(
        &self,
        bus: &Bus,
        topic: &str,
        options: ConsumerOptions,
    ) -> Subscription {
        let what = format!("subscribe to {topic:?} in group {:?}", options.group);
        self.limits
            .ok(&what, bus.subscribe_with(topic, options))
            .await
    }

    /// A raw consumer of `topic` (the dead-letter topic, raw bytes).
    pub(crate) async fn raw_consumer(
        &self,
        bus: &Bus,
        topic: &str,
        group: &str,
    ) -> Box<dyn Consumer> {
        let what = format!("open a raw consumer of {topic:?} in group {group:?}");
        self.limits
            .ok(&what, bus.consumer(topic, &ConsumerOptions::group(group)))
            .await
    }

    /// Opens and closes a subscription so the group exists before anything is sent (backends without
    /// replay start a new group at the end of the topic).
    pub(crate) async fn declare_group(&self, bus: &Bus, topic: &str, group: &str) {
        let mut sub = self.subscribe(bus, topic, group).await;
        self.limits.ok("close a subscription", sub.close()).await;
    }

    /// Starts [`consume`] on `sub` in a task of its own.
    pub(crate) fn spawn_consumer(
        &self,
        sub: Subscription,
        ledger: &Arc<Ledger>,
        who: impl Into<String>,
    ) -> Spawned<Vec<Task>> {
        spawn(consume(sub, ledger.clone(), self.limits, who.into()))
    }

    /// Waits for spawned tasks, failing as soon as one of them fails. Every wait inside them is
    /// bounded by [`Limits::wait`]; this bound only catches a task that chains several such waits.
    pub(crate) async fn join<T>(&self, tasks: Vec<Spawned<T>>) -> Vec<T> {
        let all = futures::future::try_join_all(tasks);
        match tokio::time::timeout(self.limits.wait * 4, all).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("{}: a task of the case failed: {e}", self.case()),
            Err(_) => panic!(
                "{}: timed out waiting for the case's tasks to finish",
                self.case()
            ),
        }
    }
}

/// A task spawned by a case, aborted when dropped, so a case that fails leaves nothing running.
pub(crate) struct Spawned<T>(JoinHandle<T>);

/// Spawns `fut` as a [`Spawned`] task.
pub(crate) fn spawn<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Spawned<T> {
    Spawned(tokio::spawn(fut))
}

impl<T> Future for Spawned<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Receives and acks tasks from `sub`, recording each in `ledger`, until the ledger has every id
/// it was sent; then listens [`Limits::settle`] longer for duplicates, closes `sub` and returns the
/// tasks it received. Fails on an error, an early end, or when the ids do not all arrive in time.
pub(crate) async fn consume(
    sub: Subscription,
    ledger: Arc<Ledger>,
    limits: Limits,
    who: String,
) -> Vec<Task> {
    consume_until(sub, ledger.clone(), vec![ledger], limits, who).await
}

/// Like [`consume`], but goes on until every ledger of `until` is complete (the dead letters the
/// subscription produces on the way, for instance).
pub(crate) async fn consume_until(
    mut sub: Subscription,
    ledger: Arc<Ledger>,
    until: Vec<Arc<Ledger>>,
    limits: Limits,
    who: String,
) -> Vec<Task> {
    let all_complete = || async {
        for ledger in &until {
            ledger.all_received().await;
        }
    };
    let mut got = Vec::new();
    let receive = async {
        loop {
            let next = tokio::select! {
                biased;
                () = all_complete() => break,
                next = sub.next() => next,
            };
            match next {
                Ok(Some(r)) => {
                    let (task, delivery) = r.into_parts();
                    ledger.received(&task.id);
                    limits.ok(&format!("{who}: ack"), delivery.ack()).await;
                    got.push(task);
                }
                Ok(None) => panic!(
                    "{}: {who}: the subscription ended before every task arrived: {}",
                    limits.case,
                    ledger.report()
                ),
                Err(e) => panic!(
                    "{}: {who}: error receiving: {e}; {}",
                    limits.case,
                    ledger.report()
                ),
            }
        }
    };
    if tokio::time::timeout(limits.wait, receive).await.is_err() {
        let reports: Vec<String> = until.iter().map(|l| l.report().to_string()).collect();
        panic!(
            "{}: {who}: timed out after {:?} waiting for every task: {}",
            limits.case,
            limits.wait,
            reports.join("; ")
        );
    }
    for task in limits.strays(&mut sub).await {
        ledger.received(&task.id);
        got.push(task);
    }
    limits.ok(&format!("{who}: close"), sub.close()).await;
    got
}

/// The ids of `tasks`.
pub(crate) fn ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

/// A ledger named after the case and `label`, expecting the ids of `tasks`.
pub(crate) fn ledger_for(case: &str, label: &str, tasks: &[Task]) -> Arc<Ledger> {
    let ledger = Ledger::new(format!("{case}/{label}"));
    ledger.sent_all(ids(tasks));
    Arc::new(ledger)
}
