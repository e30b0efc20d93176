//! A test harness for workers: run a worker on given tasks over the in-process bus and get the done
//! tasks back.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use taskbus_bus::{Task, TaskResult};
//! use taskbus_worker::{from_info, testing, Outcome};
//!
//! let worker = from_info(|info: String| async move {
//!     match info.parse::<u32>() {
//!         Ok(n) => Outcome::complete(n * 2),
//!         Err(e) => Outcome::error(e).no_retry(),
//!     }
//! });
//! let done = testing::run(worker, [Task::new("double", "21"), Task::new("double", "x")]).await?;
//! assert_eq!(done[0].result, Some(TaskResult::Complete));
//! assert_eq!(done[0].msg, "42");
//! assert_eq!(done[1].result, Some(TaskResult::Error));
//! assert_eq!(done[1].meta.get("no_retry"), Some("true"));
//! # Ok::<(), taskbus_worker::WorkerError>(())
//! # }).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use taskbus_bus::{Bus, ConsumerOptions, Task};

use crate::{Launcher, LauncherOptions, Report, Worker, WorkerError};

/// The result of [`run_with`].
#[derive(Debug)]
#[non_exhaustive]
pub struct TestRun {
    /// The done tasks, in the order of the input tasks they answer (tasks with ids no input had, or
    /// answered twice, come after).
    pub done: Vec<Task>,
    /// The launcher's report.
    pub report: Report,
    /// The bus the run used, to look at other topics (the dead-letter topic, say).
    pub bus: Bus,
    /// The topic the tasks were sent to.
    pub topic: String,
}

/// Runs `worker` on `tasks` with default options (and `max_in_progress` 8) and returns their done
/// tasks in input order.
pub async fn run<W, I>(worker: W, tasks: I) -> Result<Vec<Task>, WorkerError>
where
    W: Worker,
    I: IntoIterator<Item = Task>,
{
    let options = LauncherOptions::default().max_in_progress(8);
    Ok(run_with(options, worker, tasks).await?.done)
}

/// Runs `worker` on `tasks` with `options` on a fresh in-process bus, until every task is settled,
/// and returns the done tasks and the report. The run is made `finite` and does not listen for
/// signals; every other option is used as given.
pub async fn run_with<W, I>(
    options: LauncherOptions,
    worker: W,
    tasks: I,
) -> Result<TestRun, WorkerError>
where
    W: Worker,
    I: IntoIterator<Item = Task>,
{
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let bus = Bus::connect(&format!(
        "mem:taskbus-worker-testing-{}-{run}",
        std::process::id()
    ))
    .await?;
    let topic = "tasks".to_owned();
    let tasks: Vec<Task> = tasks.into_iter().collect();
    bus.send_all(&topic, &tasks, 64).await?;
    let options = options.finite(true).handle_signals(false);
    let done_topic = options.done_topic.clone();
    let report = Launcher::new(bus.clone(), topic.clone(), options)
        .run(worker)
        .await?;
    let done = read_all(&bus, &done_topic).await?;
    Ok(TestRun {
        done: in_input_order(&tasks, done),
        report,
        bus,
        topic,
    })
}

/// Every task on `topic` now, read by a group of its own.
pub async fn read_all(bus: &Bus, topic: &str) -> Result<Vec<Task>, WorkerError> {
    static READS: AtomicU64 = AtomicU64::new(0);
    let group = format!("testing-reader-{}", READS.fetch_add(1, Ordering::Relaxed));
    let mut sub = bus
        .subscribe_with(topic, ConsumerOptions::group(group).finite(true))
        .await?;
    let mut all = Vec::new();
    while let Some(received) = sub.next().await? {
        all.push(received.task.clone());
        received.ack().await?;
    }
    Ok(all)
}

fn in_input_order(inputs: &[Task], mut done: Vec<Task>) -> Vec<Task> {
    let position: HashMap<&str, usize> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut seen = vec![false; inputs.len()];
    let mut rank: Vec<usize> = done
        .iter()
        .map(|t| match position.get(t.id.as_str()) {
            Some(&i) if !seen[i] => {
                seen[i] = true;
                i
            }
            _ => usize::MAX,
        })
        .collect();
    let mut order: Vec<usize> = (0..done.len()).collect();
    order.sort_by_key(|&i| rank[i]);
    rank.clear();
    let mut taken: Vec<Option<Task>> = done.drain(..).map(Some).collect();
    order.into_iter().filter_map(|i| taken[i].take()).collect()
}
