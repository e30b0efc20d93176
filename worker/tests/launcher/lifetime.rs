//! `lifetime_workers`: exactly N tasks, then a clean exit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskbus_bus::TaskResult;
use taskbus_worker::{from_info, LauncherOptions, Outcome, Stopped};

use crate::util::{on_every_bus, tasks};

on_every_bus! {
    async fn lifetime_workers_runs_exactly_n_tasks_and_leaves_the_rest(fx) {
        let inputs = tasks("batch", 10);
        fx.send("batch", &inputs).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let worker = from_info(move |_: String| {
            c.fetch_add(1, Ordering::SeqCst);
            async { tokio::time::sleep(Duration::from_millis(20)).await; Outcome::complete("first") }
        });
        // More slots than the lifetime: no race may run a fifth task (or stop at three).
        let options = LauncherOptions::default().lifetime_workers(4).max_in_progress(8);
        let report = fx.run("batch", options, worker).await;
        assert_eq!(report.stopped, Stopped::Lifetime);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let done = fx.read("done").await;
        assert_eq!(done.len(), 4, "{done:?}");
        assert_eq!(report.stats.done.complete, 4);

        // The other six are still on the topic for the next worker.
        let worker = from_info(|_: String| async { Outcome::complete("second") });
        let report = fx.run("batch", LauncherOptions::default().max_in_progress(8), worker).await;
        assert_eq!(report.stopped, Stopped::EndOfInput);
        let done = fx.read("done").await;
        assert_eq!(done.len(), 10);
        let mut ids: Vec<&str> = done.iter().map(|d| d.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 10, "each task done once");
        assert_eq!(done.iter().filter(|d| d.msg == "second").count(), 6);
        assert!(done.iter().all(|d| d.result == Some(TaskResult::Complete)));
    }
}
