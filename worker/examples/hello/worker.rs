// A complete worker binary: it greets the `info` of each `hello` task. Try it:
//   echo '{"type":"hello","info":"world"}' | cargo run -q -p taskbus-worker --example hello
use taskbus_bus::Bus;
use taskbus_worker::{from_info, Launcher, LauncherOptions, Outcome};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `stdio:` reads tasks from stdin and writes done tasks to stdout, until stdin ends.
    // Point TASKBUS_BUS at `file://./data` or `nats://127.0.0.1:4222` for a shared bus.
    let url = std::env::var("TASKBUS_BUS").unwrap_or_else(|_| "stdio:".to_owned());
    let bus = Bus::connect(&url).await?;

    let worker = from_info(|info: String| async move {
        if info.is_empty() {
            return Outcome::error("nobody to greet: set the task's info").no_retry();
        }
        Outcome::complete(format!("hello, {info}!"))
    });

    let options = LauncherOptions::default()
        .task_type("hello")
        .max_in_progress(8);
    let report = Launcher::new(bus.clone(), "hello", options)
        .run(worker)
        .await?;
    eprintln!("{report}");
    bus.close().await?;
    Ok(())
}
