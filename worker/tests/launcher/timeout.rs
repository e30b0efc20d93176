//! Per-task timeouts: from the options or the task's `timeout` meta key.

use std::time::Duration;

use taskbus_bus::{Task, TaskResult};
use taskbus_worker::{from_fn, LauncherOptions, Outcome, TaskContext};

use crate::util::{done_for, on_every_bus};

/// Sleeps for the task's info in milliseconds; `stubborn` ignores cancellation, otherwise it stops
/// when cancelled with an error saying so.
fn sleeper() -> impl taskbus_worker::Worker {
    from_fn(|task: Task, ctx: TaskContext| async move {
        let ms: u64 = task.info.parse().expect("milliseconds");
        ctx.progress("started sleeping");
        let nap = tokio::time::sleep(Duration::from_millis(ms));
        if task.job == "stubborn" {
            nap.await;
            return Outcome::complete("slept");
        }
        tokio::select! {
            () = nap => Outcome::complete("slept"),
            () = ctx.cancelled() => Outcome::error("woken up"),
        }
    })
}

on_every_bus! {
    async fn the_timeout_option_stops_long_tasks(fx) {
        let quick = Task::new("nap", "10");
        let long = Task::new("nap", "60000");
        let stubborn = Task::new("nap", "60000").job("stubborn");
        let inputs = vec![quick.clone(), long.clone(), stubborn.clone()];
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default()
            .timeout(Duration::from_millis(300))
            .cancel_grace(Duration::from_millis(200))
            .max_in_progress(3);
        let report = fx.run("nap", options, sleeper()).await;
        let done = fx.read("done").await;
        assert_eq!(done.len(), 3);
        assert_eq!(done_for(&done, &quick).result, Some(TaskResult::Complete));
        let d = done_for(&done, &long);
        assert_eq!(d.result, Some(TaskResult::Error));
        assert_eq!(d.msg, "timed out: still running after its timeout of 300ms (the worker said: woken up)");
        assert_eq!(d.meta.get("progress"), Some("started sleeping"));
        let d = done_for(&done, &stubborn);
        assert_eq!(d.result, Some(TaskResult::Error));
        assert_eq!(d.msg, "timed out: still running after its timeout of 300ms", "dropped after the grace");
        assert_eq!(report.stats.timed_out, 2);
    }

    async fn the_task_meta_timeout_wins_over_the_option(fx) {
        let short_meta = Task::new("nap", "60000").meta("timeout", "200ms");
        let long_meta = Task::new("nap", "400").meta("timeout", "1m");
        let bad_meta = Task::new("nap", "1").meta("timeout", "soon");
        let inputs = vec![short_meta.clone(), long_meta.clone(), bad_meta.clone()];
        fx.send("nap", &inputs).await;
        let options = LauncherOptions::default().timeout(Duration::from_millis(250)).max_in_progress(3);
        fx.run("nap", options, sleeper()).await;
        let done = fx.read("done").await;
        let d = done_for(&done, &short_meta);
        assert_eq!(d.result, Some(TaskResult::Error));
        assert!(d.msg.starts_with("timed out: still running after its timeout of 200ms"), "{}", d.msg);
        assert_eq!(done_for(&done, &long_meta).result, Some(TaskResult::Complete), "the meta's 1m applies, not 250ms");
        let d = done_for(&done, &bad_meta);
        assert_eq!(d.result, Some(TaskResult::Error));
        assert!(d.msg.starts_with("not started: meta key \"timeout\" has value \"soon\""), "{}", d.msg);
        assert_eq!(d.meta.get("no_retry"), Some("true"));
        assert!(d.started.is_none());
    }

    async fn a_worker_that_completes_within_the_grace_counts_as_complete(fx) {
        let input = Task::new("nap", "0");
        fx.send("finishing", std::slice::from_ref(&input)).await;
        let worker = from_fn(|_task: Task, ctx: TaskContext| async move {
            ctx.cancelled().await;
            Outcome::complete("saved my work before stopping")
        });
        let options = LauncherOptions::default()
            .timeout(Duration::from_millis(100))
            .cancel_grace(Duration::from_secs(5));
        let report = fx.run("finishing", options, worker).await;
        let done = fx.read("done").await;
        let d = done_for(&done, &input);
        assert_eq!((d.result, d.msg.as_str()), (Some(TaskResult::Complete), "saved my work before stopping"));
        assert_eq!(report.stats.timed_out, 0);
    }
}
