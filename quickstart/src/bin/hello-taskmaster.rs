//! The hello-world taskmaster: sends `hello` tasks, one per name.
//!
//! ```sh
//! hello-taskmaster [BUS_URL] [COUNT]    # default: $TASKBUS_BUS, else stdio:; 5 tasks
//! ```
//!
//! Copy this file to start a taskmaster of your own: decide what to do, make tasks, send them.

use taskbus_bus::{Bus, Task};

const NAMES: [&str; 10] = [
    "Ada", "Alan", "Grace", "Edsger", "Barbara", "Dennis", "Margaret", "Ken", "Frances", "Donald",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .or_else(|| std::env::var("TASKBUS_BUS").ok())
        .unwrap_or_else(|| "stdio:".to_owned());
    let count: usize = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|e| anyhow::anyhow!("COUNT {n:?} is not a number ({e}); try 5"))?,
        None => 5,
    };

    let bus = Bus::connect(&url).await?;
    let tasks: Vec<Task> = (0..count)
        .map(|i| Task::new("hello", NAMES[i % NAMES.len()]))
        .collect();
    // Returns once the bus has stored every task (on stdio:, once they are written to stdout).
    bus.send_all("hello", &tasks, 16).await?;
    bus.close().await?;
    eprintln!(
        "hello-taskmaster: sent {count} hello tasks to {}",
        bus.url()
    );
    Ok(())
}
