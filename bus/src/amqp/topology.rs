//! Declaring the exchanges and queues.
//!
//! The topic exchange routes each topic to the queues of its groups. Its alternate exchange
//! (`EXCHANGE:unrouted`) gets what no group's queue takes, and routes it to the topic's backlog queue,
//! which publishers declare before a topic's first message and consumers consume beside their
//! group's queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::link::{reply_code, Failure};
use super::names;
use super::options::{AmqpOptions, QueueType};
use crate::BusError;

/// How long an unused delay queue lives after its messages' delay (RabbitMQ's `x-expires`, renewed
/// by every declaration, which every delayed nack makes).
const DELAY_QUEUE_GRACE_MS: u32 = 10 * 60 * 1000;
/// The largest delay: RabbitMQ's TTLs are 32-bit milliseconds, and the queue outlives its messages.
const MAX_DELAY_MS: u32 = u32::MAX - DELAY_QUEUE_GRACE_MS;

/// Declares the alternate exchange, then the topic exchange that hands it what no queue takes.
pub(crate) async fn declare_exchanges(ch: &Channel, o: &AmqpOptions) -> Result<(), Failure> {
    let options = ExchangeDeclareOptions {
        durable: o.durable,
        ..ExchangeDeclareOptions::default()
    };
    let unrouted = names::unrouted_exchange(&o.exchange);
    ch.exchange_declare(
        &unrouted,
        ExchangeKind::Direct,
        options,
        FieldTable::default(),
    )
    .await
    .map_err(|e| declare_failure(o, "exchange", &unrouted, &e))?;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(unrouted.as_str().into()),
    );
    ch.exchange_declare(&o.exchange, ExchangeKind::Direct, options, args)
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
    let mut args = classic_arguments();
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

/// Declares the backlog queue of `topic`, bound to the alternate exchange: it keeps the topic's
/// messages sent while no group's queue is bound to the topic. Returns its name.
///
/// It is a classic queue whatever `queue_type` and `queue_expires` say, so every bus on the exchange
/// can share a topic.
pub(crate) async fn declare_backlog(
    ch: &Channel,
    o: &AmqpOptions,
    topic: &str,
) -> Result<String, Failure> {
    let name = names::backlog_queue(&o.exchange, topic);
    // Always classic and never expiring: a holding queue that every bus on the exchange shares.
    ch.queue_declare(&name, queue_options(o), classic_arguments())
        .await
        .map_err(|e| declare_failure(o, "queue", &name, &e))?;
    let unrouted = names::unrouted_exchange(&o.exchange);
    ch.queue_bind(
        &name,
        &unrouted,
        topic,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| Failure::lapin(format!("binding queue {name:?} to topic {topic:?}"), &e))?;
    Ok(name)
}

fn queue_options(o: &AmqpOptions) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: o.durable,
        ..QueueDeclareOptions::default()
    }
}

fn queue_arguments(o: &AmqpOptions) -> FieldTable {
    let mut args = match o.queue_type {
        QueueType::Classic => classic_arguments(),
        QueueType::Quorum => {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            args
        }
    };
    expire(&mut args, o);
    args
}

/// Adds `queue_expires`, when set, as RabbitMQ's `x-expires`.
fn expire(args: &mut FieldTable, o: &AmqpOptions) {
    if let Some(expires) = o.queue_expires {
        let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
}

/// A classic queue of version 2 (RabbitMQ 3.10 and later; older brokers ignore the argument), which
/// stores persistent messages about twice as fast as version 1.
fn classic_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    args.insert("x-queue-version".into(), AMQPValue::LongLongInt(2));
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
