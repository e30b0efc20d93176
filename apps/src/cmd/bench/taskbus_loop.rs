//! The taskbus loop: fill a topic with N tasks through `Bus::send_all`, then drain it with a no-op
//! worker through the real [`Launcher`] at `max_in_progress` C, until every done task is confirmed.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::ProgressBar;
use taskbus_bus::{Bus, Task};
use taskbus_worker::{Launcher, LauncherOptions, Report, StatsSnapshot};

use super::measure::{CpuClock, Measured};
use super::plan::Point;
use super::target::Target;
use super::tasks;

/// The consumer group of the workers.
pub(crate) const GROUP: &str = "bench";

/// Sends in flight while filling a topic.
pub(crate) const FILL_IN_FLIGHT: usize = 1024;

/// How long a drain may go without a single task done before it is called stuck.
const STUCK: Duration = Duration::from_secs(60);

/// Fills a new topic with `point.n` tasks and drains it through the launcher.
pub(crate) async fn run(
    target: &Target,
    point: Point,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let bus = target.connect().await?;
    let topic = target.topic("in", &[GROUP]);
    let done_topic = target.topic("done", &[]);
    target.declare_group(&bus, &topic, GROUP).await?;

    bar.set_length(point.n as u64);
    let filled = Instant::now();
    fill(&bus, &topic, point.n, 0)
        .await
        .with_context(|| format!("{}: cannot fill topic {topic:?}", target.kind))?;
    let fill = filled.elapsed();

    let cpu = CpuClock::start(target.kind.broker_process());
    let options = LauncherOptions::default()
        .group(GROUP)
        .max_in_progress(point.c)
        .done_topic(&done_topic)
        .handle_signals(false);
    let launcher = Launcher::new(bus.clone(), &topic, options);
    let (stats, shutdown) = (launcher.stats(), launcher.shutdown_handle());
    let mut running = tokio::spawn(launcher.run(tasks::noop()));
    let watched = watch(point.n, bar, || stats.snapshot(), &mut running).await;
    shutdown.request();
    let report = running
        .await
        .context("the launcher panicked")?
        .with_context(|| format!("{}: the launcher failed", target.kind))?;
    let cpu = cpu.stop();
    let _ = bus.close().await;
    let (first, last) = watched?;
    Ok(Measured {
        fill,
        drain: last - first,
        duplicates: duplicates(&report, point.n),
        cpu,
    })
}

/// Sends tasks `first..first + n` to `topic`, [`FILL_IN_FLIGHT`] at once, made in chunks so a million
/// tasks never sit in memory together.
pub(crate) async fn fill(bus: &Bus, topic: &str, n: usize, first: usize) -> anyhow::Result<()> {
    const CHUNK: usize = 50_000;
    for start in (first..first + n).step_by(CHUNK) {
        let chunk: Vec<Task> = (start..(start + CHUNK).min(first + n))
            .map(tasks::task)
            .collect();
        bus.send_all(topic, &chunk, FILL_IN_FLIGHT).await?;
    }
    Ok(())
}

/// Polls the launcher's statistics until `n` done tasks are confirmed; returns when the first task
/// was received and when the last done task was confirmed (to a poll's precision: 1 ms before the
/// first task, 5 ms after).
async fn watch(
    n: usize,
    bar: &ProgressBar,
    snapshot: impl Fn() -> StatsSnapshot,
    running: &mut tokio::task::JoinHandle<Result<Report, taskbus_worker::WorkerError>>,
) -> anyhow::Result<(Instant, Instant)> {
    let mut first = None;
    let (mut last_done, mut last_change) = (0, Instant::now());
    loop {
        let s = snapshot();
        let now = Instant::now();
        if first.is_none() && s.consumed > 0 {
            first = Some(now);
        }
        let done = s.done.total();
        bar.set_position(done);
        if done >= n as u64 {
            return Ok((first.unwrap_or(now), now));
        }
        if done != last_done {
            (last_done, last_change) = (done, now);
        }
        if running.is_finished() || last_change.elapsed() > STUCK {
            anyhow::bail!(
                "the launcher stopped after {done} of {n} done tasks ({} consumed, {} publish failures)",
                s.consumed,
                s.publish_failures
            );
        }
        let pause = if first.is_some() { 5 } else { 1 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Tasks received beyond the `n` sent.
fn duplicates(report: &Report, n: usize) -> u64 {
    report.stats.consumed.saturating_sub(n as u64)
}
