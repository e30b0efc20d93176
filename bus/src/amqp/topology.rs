//! Declaring the exchange and queues, and moving a topic's backlog into the first group's queue.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use super::link::{reply_code, Failure};
use super::names;
use super::options::AmqpOptions;
use crate::BusError;

/// How long an unused delay queue lives after its messages' delay (RabbitMQ's `x-expires`, renewed
/// by every declaration, which every delayed nack makes).
const DELAY_QUEUE_GRACE_MS: u32 = 10 * 60 * 1000;
/// The largest delay: RabbitMQ's TTLs are 32-bit milliseconds, and the queue outlives its messages.
const MAX_DELAY_MS: u32 = u32::MAX - DELAY_QUEUE_GRACE_MS;
/// How many backlog messages are moved between two acks.
const BACKLOG_BATCH: u16 = 500;
/// A backlog consumer that gets nothing for this long has moved everything there was.
const BACKLOG_IDLE: Duration = Duration::from_millis(500);

/// Declares the topic exchange.
pub(crate) async fn declare_exchange(ch: &Channel, o: &AmqpOptions) -> Result<(), Failure> {
    let options = ExchangeDeclareOptions {
        durable: o.durable,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        &o.exchange,
        ExchangeKind::Topic,
        options,
        FieldTable::default(),
    )
    .await
    .map_err(|e| declare_failure(o, "exchange", &o.exchange, &e))
}

/// Declares the queue `queue` (of the configured type) and binds it to `topic`.
pub(crate) async fn declare_bound_queue(
    ch: &Channel,
    o: &AmqpOptions,
    queue: &str,
    topic: &str,
) -> Result<(), Failure> {
    ch.queue_declare(queue, queue_options(o), queue_arguments(o))
        .await
        .map_err(|e| declare_failure(o, "queue", queue, &e))?;
    ch.queue_bind(
        queue,
        &o.exchange,
        topic,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| Failure::lapin(format!("binding queue {queue:?} to topic {topic:?}"), &e))
}

/// Declares the delay queue of `group_queue` for `delay_ms` (clamped), whose messages go back to
/// `group_queue` when their time is up, and returns its name.
pub(crate) async fn declare_delay_queue(
    ch: &Channel,
    o: &AmqpOptions,
    group_queue: &str,
    delay_ms: u32,
) -> Result<String, Failure> {
    let delay_ms = delay_ms.min(MAX_DELAY_MS);
    let name = names::delay_queue(group_queue, delay_ms);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay_ms.into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(group_queue.into()),
    );
    let expires = i64::from(delay_ms) + i64::from(DELAY_QUEUE_GRACE_MS);
    args.insert("x-expires".into(), AMQPValue::LongLongInt(expires));
    let options = QueueDeclareOptions {
        durable: o.durable,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(&name, options, args)
        .await
        .map_err(|e| declare_failure(o, "delay queue", &name, &e))?;
    Ok(name)
}

/// Declares the backlog queue of `topic` and binds it, so the topic's messages are kept while no
/// group's queue is bound to it.
pub(crate) async fn declare_backlog(
    ch: &Channel,
    o: &AmqpOptions,
    topic: &str,
) -> Result<String, Failure> {
    let name = names::backlog_queue(&o.exchange, topic);
    declare_bound_queue(ch, o, &name, topic).await?;
    Ok(name)
}

/// Moves the backlog of `topic` (messages sent while no group's queue was bound to it) into
/// `group_queue`, after unbinding the backlog. Each message is acked from the backlog only once its
/// copy is confirmed in `group_queue`. Returns how many moved.
pub(crate) async fn adopt_backlog(
    connection: &Connection,
    o: &AmqpOptions,
    topic: &str,
    group_queue: &str,
) -> Result<usize, Failure> {
    let backlog = names::backlog_queue(&o.exchange, topic);
    let op = || format!("moving the backlog {backlog:?} into {group_queue:?}");
    let ch = connection
        .create_channel()
        .await
        .map_err(|e| Failure::lapin(op(), &e))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(&backlog, passive, FieldTable::default())
        .await
    {
        Ok(_) => {}
        // No backlog: nothing was ever sent to the topic while no group existed. The 404 closed
        // this throwaway channel.
        Err(e) if reply_code(&e) == Some(404) => return Ok(0),
        Err(e) => return Err(Failure::lapin(op(), &e)),
    }
    let unbind = ch.queue_unbind(&backlog, &o.exchange, topic, FieldTable::default());
    unbind.await.map_err(|e| Failure::lapin(op(), &e))?;
    let moved = move_messages(&ch, &backlog, group_queue)
        .await
        .map_err(|e| match e {
            Moving::Lapin(e) => Failure::lapin(op(), &e),
            Moving::Refused => Failure {
                error: BusError::broker(
                    op(),
                    "RabbitMQ returned or refused a copy; does the queue exist?",
                ),
                retry: true,
            },
        });
    let _ = ch.close(200, "backlog moved").await;
    let moved = moved?;
    if moved > 0 {
        tracing::info!(topic, backlog = %backlog, queue = group_queue, moved,
            "moved messages sent before any group subscribed");
    }
    Ok(moved)
}

/// Why moving a backlog stopped.
enum Moving {
    Lapin(lapin::Error),
    /// RabbitMQ returned or nacked a copy.
    Refused,
}

impl From<lapin::Error> for Moving {
    fn from(e: lapin::Error) -> Self {
        Moving::Lapin(e)
    }
}

async fn move_messages(ch: &Channel, from: &str, to: &str) -> Result<usize, Moving> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_qos(BACKLOG_BATCH, BasicQosOptions::default())
        .await?;
    let tag = format!("taskbus-backlog-{}", uuid::Uuid::new_v4());
    let mut stream = ch
        .basic_consume(
            from,
            &tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut moved = 0;
    let mut batch = Vec::new();
    loop {
        let delivery = match tokio::time::timeout(BACKLOG_IDLE, stream.next()).await {
            Ok(Some(delivery)) => Some(delivery?),
            Ok(None) | Err(_) => None,
        };
        if let Some(d) = &delivery {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            let confirm = ch
                .basic_publish("", to, options, &d.data, d.properties.clone())
                .await?;
            batch.push((d.delivery_tag, confirm));
        }
        let full = batch.len() >= usize::from(BACKLOG_BATCH);
        if full || (delivery.is_none() && !batch.is_empty()) {
            moved += confirm_and_ack(ch, &mut batch).await?;
        }
        if delivery.is_none() {
            break;
        }
    }
    ch.basic_cancel(&tag, BasicCancelOptions::default()).await?;
    Ok(moved)
}

/// Waits for the copies' confirms, then acks the originals with one multiple-ack.
async fn confirm_and_ack(
    ch: &Channel,
    batch: &mut Vec<(u64, lapin::publisher_confirm::PublisherConfirm)>,
) -> Result<usize, Moving> {
    let n = batch.len();
    let mut last = 0;
    for (tag, confirm) in batch.drain(..) {
        match confirm.await? {
            Confirmation::Ack(None) | Confirmation::NotRequested => last = tag,
            Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => return Err(Moving::Refused),
        }
    }
    ch.basic_ack(last, BasicAckOptions { multiple: true })
        .await?;
    Ok(n)
}

fn queue_options(o: &AmqpOptions) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: o.durable,
        ..QueueDeclareOptions::default()
    }
}

fn queue_arguments(o: &AmqpOptions) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(o.queue_type.as_str().into()),
    );
    args
}

/// A failed declaration; when RabbitMQ has it with other settings, says how to resolve that.
fn declare_failure(o: &AmqpOptions, what: &str, name: &str, e: &lapin::Error) -> Failure {
    let mut failure = Failure::lapin(format!("declaring {what} {name:?}"), e);
    match reply_code(e) {
        Some(406) => {
            let fix = if what == "exchange" {
                format!(
                    "use another exchange= option, or delete it (`rabbitmqadmin -V {} delete exchange \
                     name={name}`)",
                    o.vhost()
                )
            } else {
                format!(
                    "match its settings (queue_type=, durable=), or delete it (`rabbitmqctl -p {} \
                     delete_queue {name}`; its messages go with it)",
                    o.vhost()
                )
            };
            failure.error = BusError::broker(
                format!("declaring {what} {name:?}"),
                format!(
                    "{e}: RabbitMQ already has this {what} with other settings than this bus \
                     (queue_type={}, durable={}); {fix}",
                    o.queue_type.as_str(),
                    o.durable
                ),
            );
        }
        Some(403) => {
            failure.error = BusError::broker(
                format!("declaring {what} {name:?}"),
                format!(
                    "{e}: user {:?} may not configure it on vhost {:?}; grant it with `rabbitmqctl \
                     set_permissions -p {} {} \".*\" \".*\" \".*\"`",
                    o.user(),
                    o.vhost(),
                    o.vhost(),
                    o.user()
                ),
            );
        }
        _ => {}
    }
    failure
}
