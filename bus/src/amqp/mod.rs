//! `amqp://USER:PASS@HOST:PORT/VHOST` — AMQP 0.9.1 on RabbitMQ (feature `amqp`, client `lapin`).
//!
//! ```text
//! amqp://guest:guest@127.0.0.1:5672/%2f?queue_type=quorum&prefetch=64
//! ```
//!
//! The vhost is URL-encoded: `%2f` is RabbitMQ's default vhost `/`. `amqps://` connects over TLS.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `exchange` | `taskbus` | the exchange every topic is published to (letters, digits, `.`, `_`, `-`) |
//! | `queue_type` | `classic` | `classic` (version 2) or `quorum`: the type of the groups' queues |
//! | `durable` | `true` | durable exchanges and queues, persistent messages; `false` keeps them in memory only (faster, lost when RabbitMQ restarts; classic queues only; use an exchange of its own) |
//! | `prefetch` | the consumer's `max_in_flight` (256) | unacked deliveries RabbitMQ hands one consumer at once (1–65535) |
//! | `queue_expires` | none | delete a group's queue once it has had no consumer for this long, such as `1h`: for short-lived groups like a `taskbus tail`; its messages go with it |
//! | `heartbeat` | RabbitMQ's (60s) | AMQP heartbeat interval, such as `10s`; `0s` turns heartbeats off |
//! | `frame_max` | `32768` | the largest AMQP frame, in bytes (at least 4096): lapin keeps 32 frames of buffer each way per connection, so RabbitMQ's own 131072 costs 8 MiB per connection; larger messages travel in several frames |
//! | `connect_timeout` | `10s` | how long one connection attempt may take |
//! | `reconnect_timeout` | `60s` | how long a send or a consumer waits for a lost connection to come back before it fails |
//!
//! with the options of every bus (`max_deliveries`, `dead_letter`: see [`config`](crate::config)).
//! Every bus on one exchange must agree on `queue_type`, `durable` and `queue_expires` for the groups
//! they share: RabbitMQ refuses to declare a queue it has with other settings, and the error says so.
//!
//! ## How topics and groups map onto RabbitMQ
//!
//! - A topic is a routing key on the direct exchange `EXCHANGE` (names never hold wildcards, so a
//!   direct exchange routes them, and faster than a topic exchange would). Messages are persistent
//!   (when `durable`) and every send waits for RabbitMQ's publisher confirm; concurrent sends share
//!   one confirm-mode channel, so many are in flight at once.
//! - A consumer group is a durable queue `EXCHANGE:TOPIC:GROUP` bound to the topic, so every group gets
//!   every message and the members of one group share it (names longer than RabbitMQ's 255 bytes are
//!   shortened with a hash). Classic queues are declared as version 2 (RabbitMQ 3.10+; older brokers
//!   ignore it), which stores persistent messages about twice as fast as version 1.
//! - **Messages sent while no group exists are kept, not dropped.** The exchange's alternate exchange
//!   `EXCHANGE:unrouted` takes what no group's queue takes and routes it to the topic's backlog queue
//!   `EXCHANGE:TOPIC:(backlog)`, which a publisher declares before its first message to a topic. Every
//!   consumer reads its topic's backlog beside its group's queue (older messages first). So tasks sent
//!   before any worker started are done once the first workers subscribe; a group created later
//!   starts with the messages sent after it was created (what is still in the backlog is shared by the
//!   consumers of every group then subscribed, each message going to one of them), which is why this
//!   backend declares [`Capabilities::replay`](crate::Capabilities) `false`.
//! - Acks are manual and batched: acks of consecutive deliveries go out as one multiple-ack, and a
//!   delivery is never acked before its caller acked it. An ack returns once it is queued for its
//!   channel (RabbitMQ does not answer acks); it fails if that channel is already gone, and closing
//!   the bus writes every queued ack before the connection closes.
//! - `nack` without a delay republishes the message (confirmed) to the back of its group's queue with
//!   its delivery count in a header, then acks the original: a message that keeps failing does not
//!   block the head of the queue, and a finite consumer sees it in the queue's count.
//! - `nack` with a delay republishes the message (confirmed) to a delay queue
//!   `EXCHANGE:TOPIC:GROUP:delay=Nms` whose message TTL dead-letters it back to the group's queue after
//!   the delay, then acks the original; nothing waits while holding it. Delays are rounded up to two
//!   significant digits (1234 ms → 1300 ms) so a jittered backoff makes few delay queues; an unused
//!   delay queue deletes itself ten minutes after its last message left.
//! - The delivery count: messages this bus republishes (nacks) carry their count in
//!   `x-taskbus-deliveries`; a message requeued because its consumer died (or dropped it) counts one
//!   more each time on a quorum queue (its `x-delivery-count`), and one more on a classic queue, which
//!   tells only *that* it was delivered before (`redelivered`), not how often: use
//!   `queue_type=quorum` for exact counts when consumers crash repeatedly on one message.
//!   The [`Subscription`](crate::Subscription) dead-letters a message delivered more than
//!   `max_deliveries` times.
//! - A consumer that dies (its connection or channel closes) has its unacked deliveries requeued by
//!   RabbitMQ at once, and so does a delivery dropped without being settled. There is no lease while a
//!   consumer lives (RabbitMQ's `consumer_timeout`, 30 minutes by default, closes a channel that holds
//!   a delivery longer), so [`Delivery::in_progress`](crate::Delivery::in_progress) has nothing to
//!   extend and returns at once.
//! - When the connection is lost (RabbitMQ restarts, a channel is closed), sends and consumers reconnect
//!   with backoff for up to `reconnect_timeout`; consumers declare their queues again and resume, and the
//!   deliveries they held come back from RabbitMQ. Acks of deliveries from the lost channel fail (the
//!   message is delivered again). Nothing is lost; duplicates are possible, as always at least once.
//! - Publishing and consuming use two connections, as RabbitMQ advises, so flow control on publishers
//!   never stalls acks.
//! - A finite consumer ends when its group's queue and its topic's backlog have no ready message,
//!   nothing is on its way to it, and no message it nacked with a delay is still waiting.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

#[cfg(feature = "amqp")]
mod acker;
#[cfg(feature = "amqp")]
mod consume;
#[cfg(feature = "amqp")]
mod enabled;
#[cfg(feature = "amqp")]
mod link;
#[cfg(feature = "amqp")]
mod names;
#[cfg(feature = "amqp")]
mod options;
#[cfg(feature = "amqp")]
mod publish;
#[cfg(feature = "amqp")]
mod settle;
#[cfg(feature = "amqp")]
mod topology;

#[cfg(feature = "amqp")]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    enabled::connect(url).await
}

#[cfg(not(feature = "amqp"))]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(BusError::NotBuilt {
        url: url.redacted(),
        backend: "AMQP",
        feature: "amqp",
    })
}
