//! Done tasks: results, messages, times, meta merging, retry hints, panics, concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskbus_bus::{Task, TaskResult};
use taskbus_worker::{from_fn, from_info, LauncherOptions, Outcome, TaskContext};

use crate::util::{done_for, on_every_bus, tasks};

on_every_bus! {
    async fn every_result_reaches_the_done_task_with_times_and_meta(fx) {
        let inputs: Vec<Task> = ["complete", "error", "warn", "alert"]
            .iter()
            .map(|r| Task::new("verdict", *r).meta("from", "taskmaster").meta("keep", "task"))
            .collect();
        fx.send("verdict", &inputs).await;
        let worker = from_info(|info: String| async move {
            let result: TaskResult = info.parse().expect("a result name");
            Outcome::new(result, format!("said {info}")).meta("keep", "worker").meta("added", 1)
        });
        let report = fx.run("verdict", LauncherOptions::default().max_in_progress(4), worker).await;
        let done = fx.read("done").await;
        assert_eq!(done.len(), 4, "{done:?}");
        for input in &inputs {
            let d = done_for(&done, input);
            assert_eq!(d.result.map(|r| r.to_string()), Some(input.info.clone()));
            assert_eq!(d.msg, format!("said {}", input.info));
            assert_eq!((d.kind.as_str(), d.info.as_str()), (input.kind.as_str(), input.info.as_str()));
            let (started, ended) = (d.started.expect("started"), d.ended.expect("ended"));
            assert!(started <= ended && started >= input.created.expect("created"));
            assert_eq!(d.meta.get("from"), Some("taskmaster"), "task keys are kept");
            assert_eq!(d.meta.get("keep"), Some("worker"), "worker keys win");
            assert_eq!(d.meta.get("added"), Some("1"));
        }
        assert_eq!(report.stats.done.total(), 4);
        assert_eq!(report.stats.done.alert, 1);
        assert_eq!(report.stats.consumed, 4);
        assert_eq!(report.stats.task_time.count, 4);
    }

    async fn retry_hints_and_context_meta_are_written(fx) {
        let inputs = tasks("hint", 3);
        fx.send("hint", &inputs).await;
        let worker = from_fn(|task: Task, ctx: TaskContext| async move {
            ctx.set_meta("rows", 10);
            ctx.set_meta("shared", "ctx");
            match task.info.as_str() {
                "0" => Err(Outcome::error("bad input").no_retry()),
                "1" => Err(Outcome::error("busy").retry_after(Duration::from_secs(90))),
                _ => Ok(Outcome::complete("ok").meta("shared", "outcome")),
            }
        });
        fx.run("hint", LauncherOptions::default(), worker).await;
        let done = fx.read("done").await;
        let d0 = done_for(&done, &inputs[0]);
        assert_eq!((d0.result, d0.msg.as_str()), (Some(TaskResult::Error), "bad input"));
        assert_eq!(d0.meta.get("no_retry"), Some("true"));
        assert_eq!(d0.meta.get("rows"), Some("10"));
        let d1 = done_for(&done, &inputs[1]);
        assert_eq!(d1.meta.get("retry_after"), Some("1m30s"));
        assert_eq!(d1.meta.get("no_retry"), None);
        let d2 = done_for(&done, &inputs[2]);
        assert_eq!(d2.result, Some(TaskResult::Complete));
        assert_eq!(d2.meta.get("shared"), Some("outcome"), "the outcome's keys win over the context's");
        assert_eq!(d2.meta.get("rows"), Some("10"));
    }

    async fn a_panicking_worker_gives_an_error_and_the_launcher_goes_on(fx) {
        let inputs = tasks("fragile", 6);
        fx.send("fragile", &inputs).await;
        let worker = from_info(|info: String| async move {
            if info == "2" {
                panic!("boom on {info}");
            }
            if info == "4" {
                std::panic::panic_any(42u8);
            }
            Outcome::complete("fine")
        });
        let report = fx.run("fragile", LauncherOptions::default().max_in_progress(2), worker).await;
        let done = fx.read("done").await;
        assert_eq!(done.len(), 6);
        let d2 = done_for(&done, &inputs[2]);
        assert_eq!(d2.result, Some(TaskResult::Error));
        assert_eq!(d2.msg, "worker panicked: boom on 2");
        assert!(d2.started.is_some() && d2.ended.is_some());
        let d4 = done_for(&done, &inputs[4]);
        assert_eq!(d4.msg, "worker panicked: a non-string panic payload");
        for i in [0, 1, 3, 5] {
            assert_eq!(done_for(&done, &inputs[i]).result, Some(TaskResult::Complete));
        }
        assert_eq!(report.stats.panicked, 2);
        assert_eq!(report.stats.done.complete, 4);
    }

    async fn max_in_progress_bounds_the_tasks_running_at_once(fx) {
        let inputs = tasks("slow", 12);
        fx.send("slow", &inputs).await;
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let worker = from_info(move |_info: String| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        });
        fx.run("slow", LauncherOptions::default().max_in_progress(3), worker).await;
        assert_eq!(fx.read("done").await.len(), 12);
        assert_eq!(peak.load(Ordering::SeqCst), 3, "3 run at once, never more");
    }

    async fn done_tasks_go_to_the_done_topic_option(fx) {
        let inputs = tasks("routed", 3);
        fx.send("routed", &inputs).await;
        let worker = from_info(|_: String| async { Outcome::complete("ok") });
        fx.run("routed", LauncherOptions::default().done_topic("routed-done"), worker).await;
        let done = fx.read("routed-done").await;
        assert_eq!(done.len(), 3);
        for input in &inputs {
            assert_eq!(done_for(&done, input).result, Some(TaskResult::Complete));
        }
        assert!(fx.read("done").await.is_empty(), "nothing on the default done topic");
    }

    async fn end_of_input_lets_running_tasks_finish(fx) {
        let inputs = tasks("tail", 4);
        fx.send("tail", &inputs).await;
        let worker = from_fn(|_task: Task, ctx: TaskContext| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!ctx.is_cancelled(), "the end of input cancels nothing");
            Outcome::complete("finished after the input ended")
        });
        let report = fx.run("tail", LauncherOptions::default().max_in_progress(4), worker).await;
        assert_eq!(report.stopped, taskbus_worker::Stopped::EndOfInput);
        let done = fx.read("done").await;
        assert_eq!(done.len(), 4);
        assert!(done.iter().all(|d| d.result == Some(TaskResult::Complete)));
    }
}
