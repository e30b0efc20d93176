//! Send → done latency: one task at a time at a fixed rate into a running launcher (no-op worker),
//! each timed from just before its `send` until its done task reaches a consumer of the done topic —
//! what a taskmaster waiting for the task sees.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use taskbus_bus::{Bus, Subscription};
use taskbus_worker::{Launcher, LauncherOptions};
use tokio::time::{timeout, MissedTickBehavior};

use super::measure::rate;
use super::target::Target;
use super::taskbus_loop::GROUP;
use super::tasks;

/// The group that reads the done tasks.
const DONE_GROUP: &str = "latency";

/// How long a done task may take to show up before the measure fails.
const LOST: Duration = Duration::from_secs(60);

/// What one latency measure saw.
#[derive(Debug)]
pub(crate) struct Latencies {
    /// Send → done of each task, sorted.
    pub(crate) sorted: Vec<Duration>,
    /// The rate the tasks were really sent at (below the asked rate when sends are slower).
    pub(crate) achieved_rate: f64,
}

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Sends `count` tasks at `per_sec`, through a launcher with `max_in_progress` `c`.
pub(crate) async fn run(
    target: &Target,
    per_sec: f64,
    count: usize,
    c: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Latencies> {
    let bus = target.connect().await?;
    let topic = target.topic("lat", &[GROUP]);
    let done_topic = target.topic("latdone", &[DONE_GROUP]);
    target.declare_group(&bus, &topic, GROUP).await?;
    let mut done = bus.subscribe(&done_topic, DONE_GROUP).await?;
    let options = LauncherOptions::default()
        .group(GROUP)
        .max_in_progress(c)
        .done_topic(&done_topic)
        .handle_signals(false);
    let launcher = Launcher::new(bus.clone(), &topic, options);
    let shutdown = launcher.shutdown_handle();
    let running = tokio::spawn(launcher.run(tasks::noop()));

    let measured = async {
        warm_up(&bus, &topic, &mut done).await?;
        let sent: Sent = Arc::default();
        let receiver = tokio::spawn(receive(done, count, Arc::clone(&sent), bar.clone()));
        let achieved_rate = send_paced(&bus, &topic, per_sec, count, &sent).await?;
        let mut sorted = receiver.await.context("the done-task reader panicked")??;
        sorted.sort_unstable();
        anyhow::Ok(Latencies {
            sorted,
            achieved_rate,
        })
    }
    .await;
    shutdown.request();
    running
        .await
        .context("the launcher panicked")?
        .with_context(|| format!("{}: the launcher failed", target.kind))?;
    let _ = bus.close().await;
    measured
}

/// Sends one task and waits for its done task, so the launcher and the done reader are running
/// (consumer groups joined) before anything is timed.
async fn warm_up(bus: &Bus, topic: &str, done: &mut Subscription) -> anyhow::Result<()> {
    bus.send(topic, &tasks::task(usize::MAX)).await?;
    let received = timeout(LOST, done.next())
        .await
        .map_err(|_| anyhow::anyhow!("no done task within {LOST:?} of the warm-up task"))??
        .context("the done topic ended")?;
    received.ack().await?;
    Ok(())
}

/// Sends `count` tasks, one at a time, one every 1/`per_sec` seconds; returns the rate achieved.
async fn send_paced(
    bus: &Bus,
    topic: &str,
    per_sec: f64,
    count: usize,
    sent: &Sent,
) -> anyhow::Result<f64> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec.max(0.001)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    for i in 0..count {
        tick.tick().await;
        let task = tasks::task(i);
        lock(sent).insert(task.id.clone(), Instant::now());
        bus.send(topic, &task).await?;
    }
    Ok(rate(count, started.elapsed()))
}

/// Reads done tasks until `count` of the sent ones came back; returns their latencies.
async fn receive(
    mut done: Subscription,
    count: usize,
    sent: Sent,
    bar: ProgressBar,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let received = timeout(LOST, done.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "only {} of {count} done tasks came back within {LOST:?}",
                    latencies.len()
                )
            })??
            .context("the done topic ended")?;
        let now = Instant::now();
        if let Some(at) = lock(&sent).remove(&received.task.id) {
            latencies.push(now - at);
            bar.inc(1);
        }
        received.ack().await?;
    }
    let _ = done.close().await;
    Ok(latencies)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
