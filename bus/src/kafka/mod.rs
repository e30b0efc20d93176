//! `kafka://HOST:PORT[,HOST:PORT…]` — Kafka (feature `kafka`), through a bundled librdkafka.
//!
//! ```text
//! kafka://127.0.0.1:9092
//! kafka://k1:9092,k2:9092,k3:9092?partitions=12&replication=3&session_timeout=30s
//! kafka://USER:PASSWORD@k1:9092?rdkafka.security.protocol=sasl_ssl
//! ```
//!
//! A port left out is 9092. `USER:PASSWORD@` (percent-encoded) turns on SASL/PLAIN over plaintext;
//! change the protocol or mechanism with the `rdkafka.` options below (`security.protocol=sasl_ssl`
//! for TLS: librdkafka is built with the system's OpenSSL). Passwords belong in the user info
//! rather than in `rdkafka.sasl.password`, because error messages and logs print the URL with the
//! user info's password removed.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `partitions` | `3` | partitions of the topics this bus creates (more partitions, more members of a group can work at once) |
//! | `replication` | `-1` | replication factor of the topics it creates; `-1` is the cluster's default |
//! | `session_timeout` | `10s` | how long a member that stopped heartbeating (a crashed worker) keeps its partitions; its unfinished messages then go to another member |
//! | `rebalance_wait` | `30s` | how long a rebalance waits for a handed-out message of a partition being taken away; `in_progress` renews this lease, up to 4/5 of librdkafka's `max.poll.interval.ms` (the larger of 300 s and twice `rebalance_wait`) |
//! | `join_wait` | `session_timeout` | how long opening a consumer waits for the group to assign it partitions (`0s`: not at all) |
//! | `commit_interval` | `1s` | how often finished offsets are committed (`auto.commit.interval.ms`) |
//! | `linger` | `0ms` | how long the producer waits to batch messages (`linger.ms`). A worker waits for each done task's delivery report before it takes the next task, so with C tasks in flight a linger caps it near C / linger (64 in flight, 5 ms: about 10k tasks/s); at `0ms` the producer still batches whatever queues while a request is on the wire. Raise it for bulk sends that do not wait one by one |
//! | `compression` | `none` | `none`, `gzip`, `snappy`, `lz4` or `zstd` |
//! | `send_timeout` | `30s` | how long a send may wait for its delivery report before failing |
//! | `connect_timeout` | `10s` | how long connecting (and creating a topic) waits for the brokers |
//! | `client_id` | `taskbus` | the `client.id` brokers see |
//! | `group_per_topic` | `true` | the Kafka group id is `GROUP.TOPIC`, so one group name used on several topics (the default `workers`) makes separate Kafka groups whose rebalances do not hold each other up; `false` uses `GROUP` as it is |
//! | `rdkafka.KEY` | | any librdkafka setting, passed as it is and winning over the above (`rdkafka.security.protocol=ssl`, `rdkafka.ssl.ca.location=…`, `rdkafka.fetch.wait.max.ms=50`) |
//!
//! ## How the delivery contract maps onto Kafka
//!
//! - **Send** uses the idempotent producer (`acks=all`, no duplicates from retries) and returns
//!   when the delivery report arrives; concurrent sends are batched and pipelined. The task id is the
//!   message key, so the messages of one key keep their order in one partition.
//! - **Topics** are created through the admin API with `partitions` and `replication` when a send
//!   or a consumer first needs them (brokers need not auto-create topics).
//! - **Groups** are Kafka consumer groups. A new group starts at the earliest message (replay).
//!   Opening a consumer waits (up to `join_wait`) until the group has assigned it partitions, so
//!   members opened one after the other have settled their rebalances before work arrives.
//! - **Ack.** Kafka commits one offset per partition: "everything below is done". Messages finish
//!   out of order, so each partition's offset is committed only up to the lowest message not yet
//!   acked, and a slow message holds the commit back while later ones finish. After a crash, the
//!   group resumes from there: the slow message comes again, and so may later ones that were acked
//!   but lay above it (at least once).
//! - **Nack** publishes a copy of the message to the same topic (same key) with headers naming the
//!   group (other groups skip it), the delivery count and, for a delay, a not-before time the
//!   consuming member honours by holding the copy back; then the original counts as done. A held-back
//!   copy holds its partition's commit back, so keep nack delays short (seconds to minutes) and
//!   leave long waits to the retry taskmaster. A delivery dropped without ack or nack is nacked the
//!   same way in the background.
//! - **Redelivery limit.** The delivery count travels in the copy's headers, so the subscription
//!   dead-letters a message nacked too often. A delivery cut short by a crashed process is not
//!   counted (Kafka keeps no per-message state): it comes back with the count it had.
//! - **Leases.** A member's session is its lease: a crashed member's partitions move to the others
//!   after `session_timeout`, and they resume from the committed offsets. While the member lives,
//!   its messages are not handed to anyone else; when a rebalance takes a partition away, the
//!   member first waits for the messages it handed out from it (each for `rebalance_wait`, renewed
//!   by `in_progress`), then commits what is done.
//! - **Flow.** Each assigned partition gets a librdkafka queue of its own; a member takes messages
//!   from them only while the application holds fewer than `max_in_flight`, and the rest wait,
//!   prefetched, in librdkafka (no pause and resume, which would throw prefetched data away).
//! - **Threads.** Each consumer has a poll thread: Kafka drops a member that stops polling, and
//!   rebalances are served while polling, so the member polls whether or not the application asks
//!   for messages.
//! - **Finite consumers** end once every partition assigned to them is read to its end and every
//!   message handed out is settled.
//! - **Ordering** holds per key (per partition), not across a topic of several partitions.
//! - **Rebalances** use librdkafka's default (eager) assignors: a rebalance takes every partition
//!   away and hands them out again. `rdkafka.partition.assignment.strategy=cooperative-sticky`
//!   moves only the partitions that change owner; it is not tested here (tansu 0.6, the test
//!   broker, delivered duplicates with it).

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

#[cfg(feature = "kafka")]
mod consumer;
#[cfg(feature = "kafka")]
mod context;
#[cfg(feature = "kafka")]
mod enabled;
#[cfg(feature = "kafka")]
mod headers;
#[cfg(feature = "kafka")]
mod logs;
#[cfg(feature = "kafka")]
mod offsets;
#[cfg(feature = "kafka")]
mod producer;
#[cfg(feature = "kafka")]
mod pump;
#[cfg(feature = "kafka")]
mod settings;
#[cfg(feature = "kafka")]
mod state;

#[cfg(feature = "kafka")]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    enabled::connect(url).await
}

#[cfg(not(feature = "kafka"))]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(BusError::NotBuilt {
        url: url.redacted(),
        backend: "Kafka",
        feature: "kafka",
    })
}
