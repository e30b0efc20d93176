//! Shutdown in-process (through the `Shutdown` handle): drain, kill time, redeliver or fail, a
//! second request. Signals to a real process are in `process.rs`.

use std::time::Duration;

use taskbus_bus::{Task, TaskResult};
use taskbus_worker::{
    from_fn, Launcher, LauncherOptions, OnShutdown, Outcome, Report, Stopped, TaskContext,
};

use crate::util::{done_for, on_every_bus, tasks, within, Fixture};

/// A worker that sleeps for the task's info in milliseconds, stopping early when cancelled.
fn napper() -> impl taskbus_worker::Worker {
    from_fn(|task: Task, ctx: TaskContext| async move {
        let ms: u64 = task.info.parse().expect("milliseconds");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Outcome::complete(format!("{ms}ms nap")),
            () = ctx.cancelled() => Outcome::error("cancelled mid-nap"),
        }
    })
}

/// Starts a following (not finite) launcher and returns its shutdown handle, its stats and the run,
/// once `running` tasks are running.
async fn start(
    fx: &Fixture,
    topic: &str,
    options: LauncherOptions,
    running: u64,
) -> (taskbus_worker::Shutdown, tokio::task::JoinHandle<Report>) {
    let launcher = Launcher::new(fx.bus.clone(), topic, options.handle_signals(false));
    let (shutdown, stats) = (launcher.shutdown_handle(), launcher.stats());
    let run = tokio::spawn(async move { launcher.run(napper()).await.expect("the launcher runs") });
    within(30, async {
        while stats.snapshot().running < running {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    (shutdown, run)
}

fn naps(ms: u64, n: usize) -> Vec<Task> {
    tasks("nap", n)
        .into_iter()
        .map(|mut t| {
            t.info = ms.to_string();
            t
        })
        .collect()
}

on_every_bus! {
    async fn a_shutdown_stops_fetching_and_lets_running_tasks_finish(fx) {
        let inputs = naps(300, 10);
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default().max_in_progress(2).worker_kill_time(Duration::from_secs(30));
        let (shutdown, run) = start(fx, "nap", options, 2).await;
        shutdown.request();
        let report = within(30, run).await.expect("joined");
        assert_eq!(report.stopped, Stopped::Shutdown);
        let done = fx.read("done").await;
        assert_eq!(done.len(), 2, "the two running tasks finished, no others started: {done:?}");
        assert!(done.iter().all(|d| d.result == Some(TaskResult::Complete)));
        // The other eight were never taken: the next worker does them.
        let options = LauncherOptions::default().max_in_progress(8);
        let report = fx.run("nap", options, napper()).await;
        assert_eq!(report.stats.done.complete, 8);
        assert_eq!(fx.read("done").await.len(), 10);
    }

    async fn after_the_kill_time_running_tasks_are_handed_back_to_be_redone(fx) {
        let inputs = naps(60_000, 2);
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default()
            .max_in_progress(2)
            .worker_kill_time(Duration::from_millis(200))
            .on_shutdown(OnShutdown::Redeliver);
        let (shutdown, run) = start(fx, "nap", options, 2).await;
        shutdown.request();
        let report = within(30, run).await.expect("joined");
        assert_eq!(report.stats.redelivered, 2);
        assert!(fx.read("done").await.is_empty(), "nothing published for tasks cut off");
        // Handed back at once: a new worker redoes them, as second deliveries.
        let redo = from_fn(|_: Task, ctx: TaskContext| async move {
            Outcome::complete(format!("delivery {}", ctx.delivery_count()))
        });
        fx.run("nap", LauncherOptions::default(), redo).await;
        let done = fx.read("done").await;
        for input in &inputs {
            assert_eq!(done_for(&done, input).msg, "delivery 2");
        }
    }

    async fn with_on_shutdown_fail_tasks_cut_off_get_an_interrupted_error(fx) {
        let inputs = naps(60_000, 2);
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default()
            .max_in_progress(2)
            .worker_kill_time(Duration::from_millis(200))
            .on_shutdown(OnShutdown::Fail);
        let (shutdown, run) = start(fx, "nap", options, 2).await;
        shutdown.request();
        let report = within(30, run).await.expect("joined");
        assert_eq!(report.stats.interrupted, 2);
        let done = fx.read("done").await;
        for input in &inputs {
            let d = done_for(&done, input);
            assert_eq!(d.result, Some(TaskResult::Error));
            assert_eq!(d.msg, "interrupted at shutdown: still running after worker_kill_time (the worker said: cancelled mid-nap)");
        }
    }

    async fn a_second_request_ends_the_wait_at_once(fx) {
        let inputs = naps(3_600_000, 1);
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default()
            .worker_kill_time(Duration::from_secs(3600))
            .on_shutdown(OnShutdown::Fail);
        let (shutdown, run) = start(fx, "nap", options, 1).await;
        shutdown.request();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!run.is_finished(), "the first request waits for the running task");
        shutdown.request();
        let report = within(30, run).await.expect("joined");
        assert_eq!(report.stats.interrupted, 1);
        assert_eq!(fx.read("done").await.len(), 1);
    }

    async fn on_shutdown_auto_fails_on_a_volatile_bus_and_redelivers_on_a_persistent_one(fx) {
        let inputs = naps(60_000, 1);
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default().worker_kill_time(Duration::from_millis(100));
        let (shutdown, run) = start(fx, "nap", options, 1).await;
        shutdown.request();
        let report = within(30, run).await.expect("joined");
        let done = fx.read("done").await;
        if fx.bus.capabilities().persistent {
            assert_eq!(report.stats.redelivered, 1);
            assert!(done.is_empty());
        } else {
            assert_eq!(report.stats.interrupted, 1);
            assert!(done_for(&done, &inputs[0]).msg.starts_with("interrupted at shutdown"));
        }
    }
}
