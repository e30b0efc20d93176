//! The hello-world worker: answers every `hello` task with a greeting.
//!
//! ```sh
//! hello-worker [BUS_URL]        # default: $TASKBUS_BUS, else stdio:
//! ```
//!
//! Copy this file to start a worker of your own: replace the closure with your work.

use std::time::Duration;

use taskbus_bus::Bus;
use taskbus_worker::{from_info, Launcher, LauncherOptions, Outcome};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TASKBUS_BUS").ok())
        .unwrap_or_else(|| "stdio:".to_owned());
    // A name for this worker, so the done tasks show who did what.
    let me = std::env::var("WORKER_NAME").unwrap_or_else(|_| format!("pid {}", std::process::id()));

    let bus = Bus::connect(&url).await?;
    let worker = from_info(move |info: String| {
        let me = me.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await; // the "work"
            if info.is_empty() {
                return Outcome::error("nobody to greet: the task has no info").no_retry();
            }
            Outcome::complete(format!("hello, {info}! (from {me})"))
        }
    });

    // Take `hello` tasks from the `hello` topic, one at a time; done tasks go to `done`.
    // Ctrl-C (or SIGTERM) finishes the task in hand, then exits; on stdio: the end of input does.
    let options = LauncherOptions::default().task_type("hello");
    let report = Launcher::new(bus.clone(), "hello", options)
        .run(worker)
        .await?;
    eprintln!("hello-worker: {report}");
    bus.close().await?;
    Ok(())
}
