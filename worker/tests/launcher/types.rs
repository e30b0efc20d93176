//! `task_types` with `other_types`: reject and ignore, comparing types for real.

use std::time::Duration;

use taskbus_bus::{ConsumerOptions, DeadLetter, Task, TaskResult};
use taskbus_worker::{from_info, LauncherOptions, OtherTypes, Outcome};

use crate::util::{done_for, on_every_bus};

on_every_bus! {
    async fn other_types_are_rejected_with_a_done_task(fx) {
        let inputs = vec![Task::new("mine", "a"), Task::new("theirs", "b"), Task::new("mine", "c")];
        fx.send("mixed", &inputs).await;
        let worker = from_info(|info: String| async move { Outcome::complete(format!("did {info}")) });
        let options = LauncherOptions::default().task_type("mine");
        let report = fx.run("mixed", options, worker).await;
        let done = fx.read("done").await;
        assert_eq!(done.len(), 3);
        assert_eq!(done_for(&done, &inputs[0]).msg, "did a");
        assert_eq!(done_for(&done, &inputs[2]).msg, "did c");
        let rejected = done_for(&done, &inputs[1]);
        assert_eq!(rejected.result, Some(TaskResult::Error));
        assert_eq!(rejected.msg, "rejected: type \"theirs\" is not done by this worker (it does mine)");
        assert_eq!(rejected.meta.get("no_retry"), Some("true"));
        assert!(rejected.started.is_none(), "never started");
        assert!(rejected.ended.is_some());
        assert_eq!((report.stats.rejected, report.stats.consumed), (1, 3));
    }

    async fn ignored_types_are_left_for_another_member_of_the_group(fx) {
        let theirs = Task::new("theirs", "b");
        let inputs = vec![theirs.clone(), Task::new("mine", "a")];
        fx.send("shared", &inputs).await;
        // The first worker does only "mine": it leaves "theirs" on the bus and stops after its one task.
        let mine = from_info(|_: String| async { Outcome::complete("mine did it") });
        let options = LauncherOptions::default()
            .task_type("mine")
            .other_types(OtherTypes::Ignore)
            .ignore_delay(Duration::from_millis(50))
            .lifetime_workers(1);
        let report = fx.run("shared", options, mine).await;
        assert_eq!(report.stats.ignored, 1);
        let done = fx.read("done").await;
        assert_eq!(done.len(), 1, "nothing published for the ignored task: {done:?}");
        assert_eq!(done[0].msg, "mine did it");

        // A worker of the same group that does "theirs" gets it.
        let other = from_info(|_: String| async { Outcome::complete("theirs did it") });
        let report = fx.run("shared", LauncherOptions::default().task_type("theirs"), other).await;
        assert_eq!(report.stats.done.complete, 1);
        let done = fx.read("done").await;
        assert_eq!(done_for(&done, &theirs).msg, "theirs did it");
    }

    async fn a_task_no_member_does_ends_in_the_dead_letter_topic(fx) {
        let orphan = Task::new("nobody", "x");
        fx.send("orphans", std::slice::from_ref(&orphan)).await;
        let worker = from_info(|_: String| async { Outcome::complete("never") });
        let options = LauncherOptions::default()
            .task_type("somebody")
            .other_types(OtherTypes::Ignore)
            .ignore_delay(Duration::from_millis(1));
        let report = fx.run("orphans", options, worker).await;
        let max = u64::from(fx.bus.options().max_deliveries);
        assert_eq!(report.stats.ignored, max, "ignored on each delivery up to the limit");
        assert!(fx.read("done").await.is_empty());
        let mut dead = fx
            .bus
            .consumer(&fx.bus.options().dead_letter, &ConsumerOptions::group("check").finite(true))
            .await
            .expect("dead-letter consumer");
        let letter = dead.next().await.expect("read").expect("a dead letter");
        let letter = DeadLetter::from_json(&letter.payload).expect("a dead letter entry");
        assert!(letter.payload.contains(&orphan.id), "{letter:?}");
        assert!(letter.reason.contains("max_deliveries"), "{letter:?}");
    }
}
