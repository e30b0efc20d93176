//! Running one task: the deadline and timeout rules, the worker call with its heartbeat, panics, and
//! settling the delivery — publish the done task, then ack.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt;
use taskbus_bus::task::meta::keys;
use taskbus_bus::task::time;
use taskbus_bus::{Bus, Delivery, Received, Task, TaskResult};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::outcome::compact_duration;
use crate::{LauncherOptions, OnShutdown, Outcome, Stats, TaskContext, Worker};

/// What every task of one launcher shares.
pub(crate) struct Shared {
    pub(crate) bus: Bus,
    pub(crate) options: LauncherOptions,
    pub(crate) stats: Arc<Stats>,
    /// Cancelled when running tasks must stop (shutdown past `worker_kill_time`).
    pub(crate) kill: CancellationToken,
    /// The lease-extension interval, `None` when off or when the bus cannot extend leases.
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) worker: Arc<dyn Worker>,
    /// `on_shutdown` with `Auto` resolved for this bus.
    pub(crate) on_shutdown: OnShutdown,
}

/// How a delivery is settled.
enum Settle {
    /// Publish the task as done with this outcome, then ack.
    Publish(Outcome),
    /// Nack at once: the task is redone.
    Redeliver,
}

/// Runs a task of an accepted type and settles its delivery; `slot` (the launcher's permit) is let
/// go once the done task is confirmed and the ack is on its way, or once the task is handed back.
///
/// A plain function returning the instrumented future, not an `async fn`: each task in flight is a
/// spawned future of this size, and an `async fn` wrapped around it would hold its arguments and the
/// inner future's again (2.4 KB per task instead of about half).
pub(crate) fn run_task(
    shared: Arc<Shared>,
    received: Received,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    let (mut task, delivery) = received.into_parts();
    let span = tracing::info_span!("task", id = %task.id, r#type = %task.kind, job = %task.job);
    async move {
        let settle = match prepare(&shared, &task) {
            Ok(timeout) => execute(&shared, &mut task, &delivery, timeout).await,
            Err(outcome) => Settle::Publish(outcome),
        };
        match settle {
            Settle::Publish(outcome) => {
                finish(&mut task, outcome);
                publish_then_ack(&shared, &task, delivery, slot).await;
            }
            Settle::Redeliver => {
                let _slot = slot;
                Stats::bump(&shared.stats.redelivered);
                tracing::info!(id = %task.id, "cut off by the shutdown; handed back to the bus to be redone");
                if let Err(e) = delivery.nack(None).await {
                    tracing::warn!(id = %task.id, error = %e, "cannot nack; the task comes back after its lease");
                }
            }
        }
    }
    .instrument(span)
}

/// Answers a task of a type this worker does not do: reject (a done task) or ignore (nack); `slot`
/// is let go as by [`run_task`].
pub(crate) fn other_type(
    shared: Arc<Shared>,
    received: Received,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    let (mut task, delivery) = received.into_parts();
    let span = tracing::info_span!("task", id = %task.id, r#type = %task.kind, job = %task.job);
    async move {
        match shared.options.other_types {
            crate::OtherTypes::Reject => {
                Stats::bump(&shared.stats.rejected);
                let msg = format!(
                    "rejected: type {:?} is not done by this worker (it does {})",
                    task.kind,
                    shared.options.task_types.join(", ")
                );
                tracing::info!(id = %task.id, "{msg}");
                finish(&mut task, Outcome::error(msg).no_retry());
                publish_then_ack(&shared, &task, delivery, slot).await;
            }
            crate::OtherTypes::Ignore => {
                let _slot = slot;
                Stats::bump(&shared.stats.ignored);
                tracing::debug!(id = %task.id, "ignored: not this worker's type; left for another consumer");
                if let Err(e) = delivery.nack(Some(shared.options.ignore_delay)).await {
                    tracing::warn!(id = %task.id, error = %e, "cannot nack an ignored task; it comes back after its lease");
                }
            }
        }
    }
    .instrument(span)
}

/// Checks the start deadline and reads the timeout; `Err` is the outcome of a task that must not run.
fn prepare(shared: &Shared, task: &Task) -> Result<Option<Duration>, Outcome> {
    if let Some(raw) = task.meta.get(keys::DEADLINE) {
        let deadline = time::parse(raw).map_err(|e| {
            Outcome::error(format!(
                "not started: meta {}={raw:?} is not an RFC 3339 time ({e}); write it like 2024-01-02T15:04:05Z",
                keys::DEADLINE
            ))
            .no_retry()
        })?;
        let now = time::now();
        if let Some(deadline) = deadline.filter(|d| *d < now) {
            Stats::bump(&shared.stats.expired);
            return Err(Outcome::error(format!(
                "not started: its deadline {} had passed when a worker got it at {}",
                time::format(&deadline),
                time::format(&now)
            ))
            .no_retry());
        }
    }
    let timeout = task.meta.get_duration(keys::TIMEOUT).map_err(|e| {
        Outcome::error(format!("not started: {e}; write it like 30s, 5m or 1h30m")).no_retry()
    })?;
    Ok(timeout.or(shared.options.timeout))
}

/// Why a running worker was stopped.
#[derive(Clone, Copy)]
enum Stop {
    Timeout(Duration),
    Kill,
}

/// Runs the worker: stamps `started`, keeps the lease alive, enforces the timeout and the kill, and
/// catches panics.
async fn execute(
    shared: &Shared,
    task: &mut Task,
    delivery: &Delivery,
    timeout: Option<Duration>,
) -> Settle {
    let ctx = TaskContext::new(timeout, delivery.delivery_count());
    task.start();
    let slot = shared.stats.start_task(&task.id, &task.kind, &ctx);
    let began = Instant::now();
    let task: &Task = task;
    let mut run = AssertUnwindSafe(shared.worker.run(task, &ctx)).catch_unwind();
    let beat = heartbeat(delivery, &ctx, shared.heartbeat);
    tokio::pin!(beat);
    let first = tokio::select! {
        ran = &mut run => Ok(ran),
        () = sleep_for(timeout) => Err(Stop::Timeout(timeout.unwrap_or_default())),
        () = shared.kill.cancelled() => Err(Stop::Kill),
        never = &mut beat => match never {},
    };
    let settle = match first {
        Ok(ran) => Settle::Publish(returned(shared, ran)),
        Err(why) => {
            ctx.cancel();
            let late = tokio::select! {
                ran = &mut run => Some(ran),
                () = tokio::time::sleep(shared.options.cancel_grace) => None,
                never = &mut beat => match never {},
            };
            stopped(shared, why, late.map(|ran| returned(shared, ran)))
        }
    };
    drop(run);
    shared.stats.record_time(began.elapsed());
    drop(slot);
    match settle {
        Settle::Publish(outcome) => Settle::Publish(with_context_meta(outcome, &ctx)),
        Settle::Redeliver => Settle::Redeliver,
    }
}

/// The outcome of a worker that returned or panicked.
fn returned(shared: &Shared, ran: std::thread::Result<Outcome>) -> Outcome {
    ran.unwrap_or_else(|panic| {
        Stats::bump(&shared.stats.panicked);
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_owned());
        tracing::error!(panic = %msg, "the worker panicked");
        Outcome::error(format!("worker panicked: {msg}"))
    })
}

/// The outcome of a worker stopped by its timeout or the shutdown; `late` is what it returned within
/// `cancel_grace`, if it did. Work that completed anyway counts as complete.
fn stopped(shared: &Shared, why: Stop, late: Option<Outcome>) -> Settle {
    if let Some(outcome) = late.as_ref().filter(|o| o.result == TaskResult::Complete) {
        return Settle::Publish(outcome.clone());
    }
    let said = late
        .map(|o| format!(" (the worker said: {})", o.msg))
        .unwrap_or_default();
    match why {
        Stop::Timeout(limit) => {
            Stats::bump(&shared.stats.timed_out);
            tracing::warn!("timed out after {}", compact_duration(limit));
            Settle::Publish(Outcome::error(format!(
                "timed out: still running after its timeout of {}{said}",
                compact_duration(limit)
            )))
        }
        Stop::Kill => match shared.on_shutdown {
            OnShutdown::Redeliver | OnShutdown::Auto => Settle::Redeliver,
            OnShutdown::Fail => {
                Stats::bump(&shared.stats.interrupted);
                Settle::Publish(Outcome::error(format!(
                    "interrupted at shutdown: still running after worker_kill_time{said}"
                )))
            }
        },
    }
}

/// Adds the meta the worker set through its context (the outcome's own keys win) and, for a task that
/// did not complete, its last progress.
fn with_context_meta(mut outcome: Outcome, ctx: &TaskContext) -> Outcome {
    let mut meta = ctx.meta();
    if outcome.result != TaskResult::Complete {
        if let Some(progress) = ctx.current_progress() {
            if meta.get(keys::PROGRESS).is_none() {
                meta.set(keys::PROGRESS, progress);
            }
        }
    }
    meta.merge(&outcome.meta);
    outcome.meta = meta;
    outcome
}

/// Writes the outcome into the task: meta merged (the outcome's keys win), `ended`, `result`, `msg`.
fn finish(task: &mut Task, outcome: Outcome) {
    task.meta.merge(&outcome.meta);
    let started = task.started;
    task.end(outcome.result, outcome.msg);
    // A task that never ran keeps `started` unset: the done task shows it was not started.
    task.started = started;
}

/// Publishes the done task and acks the input only once the bus confirmed it; nacks the input if the
/// publish failed, so the task comes back.
///
/// The launcher's `slot` is let go as soon as the ack is on its way, before the bus confirms it: a
/// new task can start while it is written, and a bus that writes acks together (the file bus) writes
/// this one with the claim of the next task. The ack is still awaited here, so a draining launcher
/// waits for it.
async fn publish_then_ack(
    shared: &Shared,
    done: &Task,
    delivery: Delivery,
    slot: OwnedSemaphorePermit,
) {
    let topic = &shared.options.done_topic;
    match shared.bus.send(topic, done).await {
        Ok(()) => {
            if let Some(result) = done.result {
                shared.stats.record_done(result);
            }
            tracing::debug!(id = %done.id, result = ?done.result, msg = %done.msg, "done");
            let mut ack = std::pin::pin!(delivery.ack());
            // The first poll hands the ack to the bus; only then is the slot free.
            let first = futures::poll!(ack.as_mut());
            drop(slot);
            let acked = match first {
                Poll::Ready(acked) => acked,
                Poll::Pending => ack.await,
            };
            if let Err(e) = acked {
                Stats::bump(&shared.stats.ack_failures);
                tracing::warn!(id = %done.id, error = %e,
                    "the done task is published but the input could not be acked; it may be done again");
            }
        }
        Err(e) => {
            Stats::bump(&shared.stats.publish_failures);
            tracing::error!(id = %done.id, done_topic = %topic, error = %e,
                "cannot publish the done task; the input is not acked and will be delivered again");
            if let Err(e) = delivery
                .nack(Some(shared.options.publish_retry_delay))
                .await
            {
                tracing::warn!(id = %done.id, error = %e, "cannot nack either; the task comes back after its lease");
            }
            drop(slot);
        }
    }
}

/// Extends the delivery's lease every `every`, and soon after the worker reports progress. Never ends.
async fn heartbeat(delivery: &Delivery, ctx: &TaskContext, every: Option<Duration>) -> Infallible {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    let min_gap = Duration::from_secs(1).min(every);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until((last + every).into()) => {}
            () = ctx.progressed() => {
                if last.elapsed() < min_gap {
                    tokio::time::sleep_until((last + min_gap).into()).await;
                }
            }
        }
        if let Err(e) = delivery.in_progress().await {
            tracing::warn!(error = %e, "cannot extend the task's lease; another worker may get it too");
        }
        last = Instant::now();
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
