//! Throughput of the Launcher with a no-op worker: pre-fills a topic, drains it, prints tasks/s.
//!
//! ```sh
//! cargo run --release -p taskbus-worker --example noop_bench -- file:///tmp/bench 50000 256
//! ```
//!
//! Arguments: the bus URL (default `mem:`), the number of tasks (default 50000), `max_in_progress`
//! (default 256). Uses a fresh topic each run; the done tasks go to `<topic>-done`.

use std::time::Instant;

use taskbus_bus::{Bus, Task};
use taskbus_worker::{from_info, Launcher, LauncherOptions, Outcome};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "mem:".to_owned());
    let n: usize = args.next().map_or(Ok(50_000), |a| a.parse())?;
    let slots: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let bus = Bus::connect(&url).await?;
    let topic = format!("bench-{}", std::process::id());
    let tasks: Vec<Task> = (0..n)
        .map(|i| Task::new("bench", format!("s3://bucket/path/{i}?day=2024-01-02")))
        .collect();
    let filled = Instant::now();
    bus.send_all(&topic, &tasks, 256).await?;
    let fill_secs = filled.elapsed().as_secs_f64();

    let worker = from_info(|_info: String| async { Outcome::complete("") });
    let options = LauncherOptions::default()
        .max_in_progress(slots)
        .done_topic(format!("{topic}-done"))
        .finite(true);
    let started = Instant::now();
    let report = Launcher::new(bus.clone(), &topic, options)
        .run(worker)
        .await?;
    let secs = started.elapsed().as_secs_f64();
    bus.close().await?;
    #[allow(clippy::cast_precision_loss)]
    let rate = |secs: f64| n as f64 / secs;
    println!("bus {url}: {n} tasks, max_in_progress {slots}");
    println!(
        "  fill  {:>10.0} tasks/s ({fill_secs:.2}s)",
        rate(fill_secs)
    );
    println!(
        "  drain {:>10.0} tasks/s ({secs:.2}s) through the Launcher",
        rate(secs)
    );
    println!("  {report}");
    Ok(())
}
