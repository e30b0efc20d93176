//! The delivery rules around the bus: ack only after the done task is confirmed, nack when its publish
//! fails, keep the lease alive while a task runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use taskbus_bus::{Task, TaskResult};
use taskbus_worker::{from_fn, from_info, LauncherOptions, Outcome, TaskContext};

use crate::util::{done_for, faulty, on_every_bus, tasks, Faults};

on_every_bus! {
    async fn a_failed_done_publish_leaves_the_input_unacked_and_it_comes_back(fx) {
        let inputs = tasks("fragile-publish", 1);
        fx.send("in", &inputs).await;
        let faults = Arc::new(Faults { fail_topic: "done".to_owned(), ..Faults::default() });
        faults.fail_sends.store(2, Ordering::SeqCst);
        let bus = faulty(&fx.bus, faults.clone());
        let worker = from_fn(|_: Task, ctx: TaskContext| async move {
            Outcome::complete(format!("delivery {}", ctx.delivery_count()))
        });
        let options = LauncherOptions::default()
            .publish_retry_delay(Duration::from_millis(20))
            .finite(true)
            .handle_signals(false);
        let report = crate::util::within(60, taskbus_worker::Launcher::new(bus, "in", options).run(worker))
            .await
            .expect("runs");
        assert_eq!(report.stats.publish_failures, 2);
        assert_eq!(faults.nacks.load(Ordering::SeqCst), 2, "nacked after each failed publish");
        assert_eq!(faults.acks.load(Ordering::SeqCst), 1, "acked once, after the publish that worked");
        let done = fx.read("done").await;
        assert_eq!(done.len(), 1);
        let d = done_for(&done, &inputs[0]);
        assert_eq!((d.result, d.msg.as_str()), (Some(TaskResult::Complete), "delivery 3"));
    }

    async fn the_lease_is_extended_while_a_task_runs_and_on_progress(fx) {
        let inputs = tasks("long", 1);
        fx.send("long", &inputs).await;
        let faults = Arc::new(Faults::default());
        let bus = faulty(&fx.bus, faults.clone());
        let worker = from_fn(|_: Task, ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(550)).await;
            ctx.progress("50%");
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Outcome::complete("long haul")
        });
        let options = LauncherOptions::default()
            .heartbeat(Some(Duration::from_millis(200)))
            .finite(true)
            .handle_signals(false);
        let report = crate::util::within(60, taskbus_worker::Launcher::new(bus, "long", options).run(worker))
            .await
            .expect("runs");
        assert_eq!(report.stats.done.complete, 1);
        let beats = faults.in_progress_calls.load(Ordering::SeqCst);
        // ~1.75s of work at one beat per 200ms: about 8; the progress report adds one.
        assert!((5..=12).contains(&beats), "{beats} lease extensions");
        let done = fx.read("done").await;
        let d = done_for(&done, &inputs[0]);
        assert_eq!(d.meta.get("progress"), None, "a completed task carries no progress");
    }

    async fn no_heartbeat_means_no_lease_extensions(fx) {
        fx.send("short", &tasks("short", 3)).await;
        let faults = Arc::new(Faults::default());
        let bus = faulty(&fx.bus, faults.clone());
        let worker = from_info(|_: String| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Outcome::complete("ok")
        });
        let options = LauncherOptions::default().heartbeat(None).finite(true).handle_signals(false);
        taskbus_worker::Launcher::new(bus, "short", options).run(worker).await.expect("runs");
        assert_eq!(faults.in_progress_calls.load(Ordering::SeqCst), 0);
        assert_eq!(faults.acks.load(Ordering::SeqCst), 3);
    }
}
