//! The bus loop of `taskbus retry`: read done tasks in the app's own group, ask [`RetryRules`] what to
//! do, and do it. A retry waiting for its delay keeps its done message unacked — holding it (with
//! [`Received::in_progress`] renewing the lease) or, for long delays on buses that can, nacking it
//! with the remaining delay — so a restart of the app loses no pending retry, and the message is acked
//! only after the retry is published. Replicas in one group share the done topic, so one failure is
//! retried by one of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use taskbus_bus::{Bus, Capabilities, ConsumerOptions, Received, Task};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Decision, RetryConfig, RetryRules};
use crate::clock::Clock;
use crate::TaskmasterError;

/// How a [`RetryService`] holds pending retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOptions {
    /// How often a held done message's lease is renewed; keep it well below the bus's lease.
    pub keepalive: Duration,
    /// How many done messages may be held unacked at once (the consumer's in-flight limit).
    pub max_pending: usize,
    /// Retries due later than this are nacked with the delay instead of held, where the bus can delay
    /// a nack.
    pub max_hold: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            keepalive: Duration::from_secs(5),
            max_pending: 1024,
            max_hold: Duration::from_secs(600),
        }
    }
}

/// `taskbus retry` as a library.
#[derive(Debug)]
pub struct RetryService {
    bus: Bus,
    config: RetryConfig,
    clock: Arc<dyn Clock>,
    options: RetryOptions,
}

/// What one service shares with its hold tasks.
#[derive(Debug, Clone)]
struct Ctx {
    bus: Bus,
    rules: Arc<RetryRules>,
    clock: Arc<dyn Clock>,
    options: RetryOptions,
    caps: Capabilities,
    stop: CancellationToken,
}

impl RetryService {
    /// A service applying `config` to the done tasks on `bus`.
    pub fn new(bus: Bus, config: RetryConfig, clock: Arc<dyn Clock>) -> Self {
        RetryService {
            bus,
            config,
            clock,
            options: RetryOptions::default(),
        }
    }

    /// Sets the options (builder style).
    pub fn options(mut self, options: RetryOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs until `shutdown` (or until a finite done topic ends and every pending retry is sent).
    /// On shutdown, held retries are nacked at once, for another replica or the next start; a
    /// killed app's held retries come back when their lease runs out.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), TaskmasterError> {
        let options =
            ConsumerOptions::group(&self.config.group).max_in_flight(self.options.max_pending);
        let mut sub = self
            .bus
            .subscribe_with(&self.config.done_topic, options)
            .await?;
        tracing::info!(topic = %self.config.done_topic, group = %self.config.group,
            rules = self.config.rules.rules.len(), "retrying failed tasks");
        let ctx = Ctx {
            caps: self.bus.capabilities(),
            bus: self.bus,
            rules: Arc::new(self.config.rules),
            clock: self.clock,
            options: self.options,
            stop: CancellationToken::new(),
        };
        let mut pending = JoinSet::new();
        loop {
            while pending.try_join_next().is_some() {}
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = sub.next() => next,
            };
            match next {
                Ok(Some(received)) => ctx.handle(received, &mut pending).await,
                Ok(None) => {
                    while pending.join_next().await.is_some() {}
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the done topic; trying again in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let _ = sub.close().await;
        ctx.stop.cancel();
        while pending.join_next().await.is_some() {}
        Ok(())
    }
}

impl Ctx {
    async fn handle(&self, received: Received, pending: &mut JoinSet<()>) {
        let now = self.clock.now();
        match self.rules.decide(&received.task, now) {
            Decision::Ignore(reason) => {
                tracing::debug!(id = %received.task.id, kind = %received.task.kind_job(), %reason, "not retried");
                settle(received.ack().await);
            }
            Decision::Fail {
                task,
                topic,
                reason,
            } => {
                tracing::warn!(id = %task.id, kind = %task.kind_job(), attempt = task.attempt(), %reason, %topic,
                    "task failed for good");
                self.publish(received, &topic, &task).await;
            }
            Decision::Retry { task, topic, due } if due <= now => {
                self.publish(received, &topic, &task).await;
            }
            Decision::Retry { task, topic, due } => {
                let wait = (due - now).to_std().unwrap_or_default();
                let hold_is_safe = self.caps.in_progress || !self.caps.lease_redelivery;
                if self.caps.nack_delay && (wait > self.options.max_hold || !hold_is_safe) {
                    tracing::info!(id = %task.id, attempt = task.attempt(), %due, "retry scheduled (nacked with delay)");
                    settle(received.nack(Some(wait)).await);
                    return;
                }
                tracing::info!(id = %task.id, attempt = task.attempt(), %due, "retry scheduled (held)");
                let ctx = self.clone();
                pending.spawn(async move { ctx.hold(received, topic, task, due).await });
            }
        }
    }

    /// Holds `received` until `due`, renewing its lease, then publishes the retry and acks.
    async fn hold(self, received: Received, topic: String, task: Task, due: DateTime<Utc>) {
        loop {
            let now = self.clock.now();
            if now >= due {
                break;
            }
            let keepalive = chrono::Duration::from_std(self.options.keepalive).unwrap_or_default();
            tokio::select! {
                () = self.clock.sleep_until(due.min(now + keepalive)) => {}
                () = self.stop.cancelled() => {
                    // Back to the group at once: another replica, or the next start, holds it again
                    // and computes the same due time from the task.
                    tracing::info!(id = %task.id, attempt = task.attempt(), %due,
                        "shutting down: pending retry handed back to the bus");
                    settle(received.nack(None).await);
                    return;
                }
            }
            if self.clock.now() < due {
                if let Err(e) = received.in_progress().await {
                    tracing::warn!(id = %task.id, error = %e, "cannot renew the lease of a pending retry");
                }
            }
        }
        self.publish(received, &topic, &task).await;
    }

    /// Publishes `task` to `topic`, then acks `received`; nacks it when the publish fails.
    async fn publish(&self, received: Received, topic: &str, task: &Task) {
        match self.bus.send(topic, task).await {
            Ok(()) => {
                if task.result.is_none() {
                    tracing::info!(id = %task.id, kind = %task.kind_job(), attempt = task.attempt(), %topic, "retry sent");
                }
                settle(received.ack().await);
            }
            Err(e) => {
                tracing::warn!(id = %task.id, %topic, error = %e, "cannot publish; the done task is nacked and will come back");
                settle(received.nack(Some(Duration::from_secs(1))).await);
            }
        }
    }
}

fn settle(result: Result<(), taskbus_bus::BusError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot settle a done message; the bus will deliver it again");
    }
}
