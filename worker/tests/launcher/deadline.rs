//! The start deadline (meta `deadline`): a task whose deadline passed is not run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use taskbus_bus::task::time;
use taskbus_bus::{Task, TaskResult};
use taskbus_worker::{from_info, LauncherOptions, Outcome};

use crate::util::{done_for, on_every_bus};

on_every_bus! {
    async fn a_task_past_its_deadline_is_not_run_and_says_why(fx) {
        let now = time::now();
        let late = Task::new("due", "late").meta("deadline", time::format(&(now - chrono::Duration::seconds(5))));
        let early = Task::new("due", "early").meta("deadline", time::format(&(now + chrono::Duration::hours(1))));
        let garbled = Task::new("due", "garbled").meta("deadline", "tomorrow");
        let none = Task::new("due", "none");
        let inputs = vec![late.clone(), early.clone(), garbled.clone(), none.clone()];
        fx.send("due", &inputs).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let worker = from_info(move |info: String| {
            r.fetch_add(1, Ordering::SeqCst);
            async move { Outcome::complete(format!("ran {info}")) }
        });
        let report = fx.run("due", LauncherOptions::default(), worker).await;
        assert_eq!(ran.load(Ordering::SeqCst), 2, "only the tasks still in time ran");
        let done = fx.read("done").await;
        assert_eq!(done.len(), 4);
        let d = done_for(&done, &late);
        assert_eq!(d.result, Some(TaskResult::Error));
        assert!(d.msg.starts_with("not started: its deadline "), "{}", d.msg);
        assert!(d.msg.contains(" had passed when a worker got it at "), "{}", d.msg);
        assert_eq!(d.meta.get("no_retry"), Some("true"));
        assert!(d.started.is_none() && d.ended.is_some());
        let d = done_for(&done, &garbled);
        assert!(d.msg.starts_with("not started: meta deadline=\"tomorrow\" is not an RFC 3339 time"), "{}", d.msg);
        assert_eq!(done_for(&done, &early).msg, "ran early");
        assert_eq!(done_for(&done, &none).msg, "ran none");
        assert_eq!(report.stats.expired, 1);
    }
}
