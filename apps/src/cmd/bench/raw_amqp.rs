//! The raw loop on RabbitMQ with lapin, as a hand-written worker does it: durable queues of
//! persistent messages, one connection, a confirm-mode channel to publish on and a consuming channel
//! with prefetch C; for each delivery: parse, publish the done task and await its publisher confirm,
//! then ack it on its own (no multiple-acks), with C deliveries in flight.

use std::time::Instant;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::measure::{CpuClock, FirstSeen, Measured};
use super::plan::Point;
use super::target::Target;
use super::taskbus_loop::FILL_IN_FLIGHT;
use super::tasks;

/// Fills a new queue with `point.n` tasks and drains it with C deliveries in flight.
pub(crate) async fn run(
    target: &Target,
    point: Point,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let connection = connect(&target.brokers.amqp).await?;
    let result = drain_queues(&connection, target, point, bar).await;
    let _ = connection.close(200, "bench done").await;
    result
}

async fn drain_queues(
    connection: &Connection,
    target: &Target,
    point: Point,
    bar: &ProgressBar,
) -> anyhow::Result<Measured> {
    let (input, output) = (target.raw_name("in"), target.raw_name("done"));
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    declare(&publish, &input).await?;
    declare(&publish, &output).await?;
    bar.set_length(point.n as u64);

    let filled = Instant::now();
    futures::stream::iter(0..point.n)
        .map(|i| publish_confirmed(&publish, &input, tasks::task(i).to_json_bytes()))
        .buffer_unordered(FILL_IN_FLIGHT)
        .try_collect::<()>()
        .await
        .context("amqp: cannot fill the raw queue")?;
    let fill = filled.elapsed();

    let cpu = CpuClock::start(target.kind.broker_process());

    let consume = connection.create_channel().await?;
    let prefetch = u16::try_from(point.c).unwrap_or(u16::MAX);
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let deliveries = consume
        .basic_consume(
            &input,
            "raw",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("amqp: cannot consume the raw queue")?;
    let first = FirstSeen::default();
    deliveries
        .take(point.n)
        .map(|delivery| {
            let (publish, output, first) = (&publish, &output, &first);
            async move {
                let delivery = delivery.context("amqp: cannot consume")?;
                first.mark();
                let done = tasks::done_json(&delivery.data)?;
                publish_confirmed(publish, output, done).await?;
                delivery.ack(BasicAckOptions::default()).await?;
                bar.inc(1);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(point.c)
        .try_collect::<()>()
        .await?;
    let drain = first.elapsed();
    let cpu = cpu.stop();
    // Close the channels before the connection, so no delivery arrives on a closing channel.
    let _ = consume.close(200, "bench done").await;
    let _ = publish.close(200, "bench done").await;
    Ok(Measured {
        fill,
        drain,
        duplicates: 0,
        cpu,
    })
}

/// Publishes a persistent message to `queue` through the default exchange and waits for its confirm.
async fn publish_confirmed(ch: &Channel, queue: &str, payload: Vec<u8>) -> anyhow::Result<()> {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let confirm = ch
        .basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            &payload,
            properties,
        )
        .await?
        .await?;
    anyhow::ensure!(
        confirm.is_ack(),
        "amqp: RabbitMQ refused a message to {queue:?}"
    );
    Ok(())
}

/// Declares a durable queue that RabbitMQ deletes an hour after its last use, should the cleanup
/// not run.
async fn declare(ch: &Channel, name: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(3_600_000));
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name, options, arguments)
        .await
        .with_context(|| format!("amqp: cannot declare the queue {name:?}"))?;
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let address = url.split('?').next().unwrap_or(url);
    Connection::connect(address, properties).await.with_context(|| {
        format!(
            "cannot connect to {}: is RabbitMQ running? start it with `bash scripts/brokers/amqp.sh`",
            redact(address)
        )
    })
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let name = user.split(':').next().unwrap_or(user);
            format!("{}{name}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Deletes `queues` and the run's exchange `exchange`.
pub(crate) async fn delete(url: &str, queues: &[String], exchange: &str) -> anyhow::Result<()> {
    let connection = connect(url).await?;
    let mut ch = connection.create_channel().await?;
    for queue in queues {
        if ch
            .queue_delete(queue, QueueDeleteOptions::default())
            .await
            .is_err()
        {
            // A failed delete closes the channel: go on with a new one.
            ch = connection.create_channel().await?;
        }
    }
    let deleted = ch
        .exchange_delete(exchange, ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bench cleanup").await;
    deleted.with_context(|| format!("amqp: cannot delete the exchange {exchange:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            super::redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact("amqp://h:5672"), "amqp://h:5672");
    }
}
