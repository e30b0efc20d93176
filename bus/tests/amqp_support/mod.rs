//! Shared by the AMQP test binaries (`mod amqp_support;`): the RabbitMQ under test, and a
//! conformance harness for it. Tests fail, never skip, when RabbitMQ cannot be reached.
#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::time::Duration;

use async_trait::async_trait;
use taskbus_bus::conformance::Harness;
use taskbus_bus::{Bus, Capabilities};

/// The broker the tests use unless `TASKBUS_TEST_AMQP_URL` names another.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The URL of the RabbitMQ under test.
pub fn base_url() -> String {
    std::env::var("TASKBUS_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// [`base_url`] with the query `options` (`a=1&b=2`) added.
pub fn url_with(options: &str) -> String {
    let base = base_url();
    match (options.is_empty(), base.contains('?')) {
        (true, _) => base,
        (false, true) => format!("{base}&{options}"),
        (false, false) => format!("{base}?{options}"),
    }
}

/// A connection to the RabbitMQ under test, with `options`; panics saying how to start one. The
/// groups' queues it declares delete themselves 15 minutes after their last consumer left (unless
/// `options` say otherwise), so test runs do not pile up queues in RabbitMQ.
pub async fn connect(options: &str) -> Bus {
    let url = if options.contains("queue_expires=") {
        url_with(options)
    } else if options.is_empty() {
        url_with("queue_expires=15m")
    } else {
        url_with(&format!("{options}&queue_expires=15m"))
    };
    Bus::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to RabbitMQ for the AMQP tests: {e}\nstart one with \
             scripts/brokers/amqp.sh, or point TASKBUS_TEST_AMQP_URL at yours"
        )
    })
}

/// A name no other test run uses: `amqp-<label>-<uid>`.
pub fn unique(label: &str) -> String {
    let uid = uuid::Uuid::new_v4().simple().to_string();
    format!("amqp-{label}-{}", &uid[..12])
}

/// What the AMQP backend declares (checked against the backend by `harness_matches_backend`).
pub fn amqp_capabilities() -> Capabilities {
    let mut caps = Capabilities::ALL;
    caps.replay = false;
    caps
}

/// The conformance harness: connections to the RabbitMQ under test with the given options.
pub struct AmqpHarness {
    options: &'static str,
}

impl AmqpHarness {
    /// Classic queues (the default).
    pub fn classic() -> Self {
        AmqpHarness { options: "" }
    }

    /// Quorum queues.
    pub fn quorum() -> Self {
        AmqpHarness {
            options: "queue_type=quorum",
        }
    }
}

#[async_trait]
impl Harness for AmqpHarness {
    async fn connect(&self) -> Bus {
        connect(self.options).await
    }

    fn capabilities(&self) -> Capabilities {
        amqp_capabilities()
    }

    fn lease(&self) -> Duration {
        // RabbitMQ requeues a dead consumer's deliveries as soon as its connection closes.
        Duration::from_secs(1)
    }

    async fn restart_broker(&self) -> Result<(), String> {
        restart_rabbitmq().await
    }
}

/// Runs `rabbitmqctl ARGS` (the command is `TASKBUS_TEST_AMQP_RABBITMQCTL` when set, for a broker
/// elsewhere, such as `docker exec rabbit rabbitmqctl`).
pub async fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let ctl =
        std::env::var("TASKBUS_TEST_AMQP_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let mut words = ctl.split_whitespace();
    let program = words
        .next()
        .ok_or("TASKBUS_TEST_AMQP_RABBITMQCTL is empty")?;
    let output = tokio::process::Command::new(program)
        .args(words)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {ctl} {args:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{ctl} {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Stops and starts the RabbitMQ application (`rabbitmqctl stop_app`, `start_app`), then waits until
/// it accepts connections again.
pub async fn restart_rabbitmq() -> Result<(), String> {
    rabbitmqctl(&["stop_app"]).await?;
    rabbitmqctl(&["start_app"]).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match Bus::connect(&base_url()).await {
            Ok(bus) => {
                let _ = bus.close().await;
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("RabbitMQ did not come back within 120 s: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
