//! `nats://HOST:PORT[,HOST:PORT…]` — NATS JetStream (feature `nats`).
//!
//! ```text
//! nats://127.0.0.1:4222
//! nats://alice:s3cret@n1:4222,n2:4222?ack_wait=5m&storage=file&replicas=3
//! ```
//!
//! Several servers of one cluster are separated by commas; the client connects to one and fails
//! over to the others. `user:password@` before the first server logs in with a user and password.
//!
//! ## How a bus maps onto JetStream
//!
//! - A **topic** is a stream named `{stream_prefix}{topic}` (a `.` in the topic becomes `_`) holding the
//!   one subject `{subject_prefix}.{topic}`. Sending to a topic, or subscribing to it, creates the
//!   stream when it is missing, with the `storage`, `replicas`, `max_age` and `duplicate_window`
//!   below; a stream that exists already is used as it is. The stream keeps messages under the
//!   limits policy: every consumer group reads all of them, and a new group starts at the first
//!   message the stream holds. Any NATS client can feed a topic by publishing to its subject.
//! - A **consumer group** is a durable pull consumer named after the group, with explicit acks,
//!   `ack_wait` as its lease and no JetStream delivery limit (`max_deliver` = unlimited): the bus
//!   itself moves a message delivered more than `max_deliveries` times to the dead-letter topic, so
//!   nothing is dropped silently by the broker. Subscribing creates the consumer when it is missing
//!   and updates its `ack_wait` and `max_ack_pending` when the URL asks for other values.
//! - A consumer fetches in batches: it asks for as many messages as it has room for under
//!   [`ConsumerOptions::max_in_flight`](crate::ConsumerOptions), and hands out no more than that
//!   unsettled at once. While its deliveries are settled quickly (under 0.2 s on average) it also
//!   fetches up to `max_in_flight` ahead, so a free slot finds a message waiting instead of a round
//!   trip; while they are slow it fetches only what it can hand out, so messages do not wait in a
//!   client buffer behind long tasks. A fetched message that waited most of its ack wait (its
//!   caller was away, busy) is let go rather than handed out, as the server may already have given
//!   it to another member: it comes back after its ack wait.
//! - Pull requests wait at the server for a little under half the ack wait (0.2 to 30 s). A
//!   consumer that closes, or is dropped, keeps its inbox until its last pull request has ended
//!   and hands back (`-NAK`) whatever those requests still bring, because nats-server 2.9
//!   mishandles redeliveries while only requests behind an unread inbox wait (it delivers the
//!   newest message a second time).
//! - `ack` sends `+ACK` and returns without waiting for the server (as AMQP and Kafka consumers
//!   do); while the connection is down the client keeps it and sends it after reconnecting, and an
//!   ack that is lost all the same means one more delivery, never a lost task. With
//!   `confirm_acks=true` it waits for the server's confirmation (a JetStream "double ack") instead,
//!   at some cost in throughput. `nack` waits for the server's confirmation, and with a delay sends
//!   `-NAK {"delay":…}`. [`Delivery::in_progress`](crate::Delivery::in_progress) sends `+WPI` and
//!   waits for its confirmation: it restarts the message's ack wait, so a task that runs longer
//!   than `ack_wait` keeps its lease while its worker calls it. A delivery dropped without being
//!   settled is nacked at once. The delivery count comes from the message's JetStream metadata.
//! - `send` waits for the JetStream publish ack. Concurrent sends are pipelined on one connection
//!   (no lock is held across a publish), so `Bus::send_all` and a worker's many in-flight tasks
//!   keep many publishes unconfirmed at once.
//! - A finite consumer ([`ConsumerOptions::finite`](crate::ConsumerOptions)) asks with `no_wait`
//!   pull requests and ends when the server has nothing left to deliver to its group (no
//!   undelivered message, no redelivery due) and none of its own nacks with a delay is still
//!   waiting. Messages other members of the group hold unacked do not keep it open.
//!
//! ## De-duplication: what it does and does not guarantee
//!
//! `Bus::send` gives every task with an id a `Nats-Msg-Id` header derived from it
//! ([`Task::dedup_key`](crate::Task::dedup_key): type, job, id, attempt and result). JetStream
//! drops a message whose `Nats-Msg-Id` the **same stream** (topic) already stored within its
//! **duplicate window** (`duplicate_window`, 2 minutes by default); the publish still succeeds, so a
//! sender that retries after a lost publish ack, or a worker that publishes the same done task again
//! after a crash and redelivery within the window, stores it once.
//!
//! It does **not**: drop a duplicate sent after the window has passed; drop the same task sent to two
//! different topics; stop a consumer from receiving a message twice (a redelivery after a lost ack
//! or an expired lease is still possible: delivery is at least once, and workers must be
//! idempotent); nor hold across a change of attempt or result (a retry is a new message, on
//! purpose). Messages sent with `Bus::send_raw` carry no id and are never de-duplicated.
//!
//! ## Reconnecting
//!
//! The client reconnects by itself, forever, with a growing delay (up to 4 s). While it is away,
//! `send` keeps retrying for `publish_timeout`, and a publish or a confirmed ack that was waiting
//! for its answer when the connection dropped is sent again on the new one (a re-sent task is not
//! stored twice, thanks to its `Nats-Msg-Id`). A consumer re-issues its pull requests as soon as
//! the connection is back, or when a request goes unanswered past its expiry, and recreates its
//! stream and durable consumer if the server lost them. The durable consumer on the server
//! remembers what was acked. With `storage=file` a restart of nats-server loses nothing that was
//! confirmed (a crash of the server may forget the last acks, so some tasks come once more); with
//! `storage=memory` a restart loses the streams and everything in them, and the bus says so by not
//! declaring [`Capabilities::persistent`](crate::Capabilities).
//!
//! ## Options
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `user:pass@` | none | user and password, before the first server |
//! | `token` | none | an authentication token |
//! | `creds` | none | path of a `.creds` file (JWT and NKey seed, as `nsc` writes it) |
//! | `nkey` | none | an NKey seed (`SU…`) to sign in with |
//! | `tls` | `false` | require TLS |
//! | `tls_ca` | system roots | a PEM file of root certificates to trust |
//! | `name` | `taskbus` | the connection name the server shows in its monitoring |
//! | `stream_prefix` | `taskbus-` | prefix of stream names; letters, digits, `_` and `-` |
//! | `subject_prefix` | `taskbus` | prefix of subjects; empty to use the topic as the subject |
//! | `ack_wait` | `30s` | the lease: how long a delivery may stay unsettled before it is handed out again |
//! | `max_ack_pending` | `10000` | how many messages one group may hold unacked at once, over all its members |
//! | `confirm_acks` | `false` | make `ack` wait for the server's confirmation |
//! | `storage` | `file` | `file` or `memory`, for new streams |
//! | `replicas` | `1` | copies of each new stream in a cluster (1 to 5) |
//! | `max_age` | `0` (forever) | how long new streams keep messages, such as `7d`; `0` keeps them |
//! | `duplicate_window` | `2m` | how long new streams remember `Nats-Msg-Id`s (see above) |
//! | `connect_timeout` | `5s` | how long the first connection may take |
//! | `request_timeout` | `5s` | how long one JetStream request (publish ack, ack, admin) may take |
//! | `publish_timeout` | `30s` | how long `send` keeps retrying while the server is unreachable |
//!
//! The options every bus has (`max_deliveries`, `dead_letter`) are in [`config`](crate::config).
//! An option not listed here is an error.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

#[cfg(feature = "nats")]
mod acker;
#[cfg(feature = "nats")]
mod consumer;
#[cfg(feature = "nats")]
mod enabled;
#[cfg(feature = "nats")]
mod flow;
#[cfg(feature = "nats")]
mod options;
#[cfg(feature = "nats")]
mod pulls;
#[cfg(feature = "nats")]
mod topology;

#[cfg(feature = "nats")]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    enabled::connect(url).await
}

#[cfg(not(feature = "nats"))]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(BusError::NotBuilt {
        url: url.redacted(),
        backend: "NATS",
        feature: "nats",
    })
}
