//! A durable pull consumer: pull requests sized to the room under `max_in_flight`, sent from
//! [`Consumer::next`] itself, with heartbeats and reconnects watched so a consumer carries on by
//! itself after nats-server restarts.
//!
//! Every pull request goes to one inbox. The server serves a consumer's waiting requests oldest
//! first, so the messages each outstanding request still owes are tracked in a queue: a message
//! pays the oldest, and a `408 Request Timeout` (or, for `no_wait`, `404 No Messages`) closes it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::acker::{Flow, NatsAcker};
use super::topology::Topology;
use crate::{BusError, Consumer, ConsumerOptions, Delivery};

/// How long one pull request waits at the server for messages.
const EXPIRES: Duration = Duration::from_secs(30);
/// How often the server says a waiting pull request is still alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence after which outstanding pull requests are taken for lost (server restarted, link down).
const SILENCE: Duration = Duration::from_secs(12);
/// How long a finite consumer's pull waits when other members' pulls are queued before it.
const FINITE_WAIT: Duration = Duration::from_millis(500);
/// The pause before asking again after the server could not serve a pull request.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// One consumer of one topic in one group.
pub(super) struct NatsConsumer {
    client: Client,
    topology: Arc<Topology>,
    topic: Arc<str>,
    group: String,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    pull_subject: String,
    inbox: String,
    sub: Subscriber,
    flow: Arc<Flow>,
    max_in_flight: usize,
    finite: bool,
    /// What each outstanding pull request still owes, oldest first.
    owed: VecDeque<usize>,
    /// Messages delivered since the last `no_wait` request was sent (finite consumers).
    got_since_request: usize,
    /// The server said other pulls of the group wait for more than is pending (finite consumers).
    others_waiting: bool,
    last_heard: Instant,
    reconnects: watch::Receiver<u64>,
    closed: bool,
}

impl NatsConsumer {
    /// Subscribes the inbox of a consumer of `topic` in `options.group`, whose stream and durable
    /// consumer exist.
    pub(super) async fn open(
        client: Client,
        topology: Arc<Topology>,
        topic: &str,
        options: &ConsumerOptions,
        mut reconnects: watch::Receiver<u64>,
    ) -> Result<NatsConsumer, BusError> {
        // Only reconnects from now on matter.
        reconnects.borrow_and_update();
        let inbox = client.new_inbox();
        let sub = client.subscribe(inbox.clone()).await.map_err(|e| {
            BusError::broker(format!("subscribe to the pull inbox for topic {topic:?}"), e)
        })?;
        let pull_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            topology.stream(topic),
            Topology::consumer(&options.group)
        );
        Ok(NatsConsumer {
            client,
            topology,
            topic: Arc::from(topic),
            group: options.group.clone(),
            pull_subject,
            inbox,
            sub,
            flow: Arc::new(Flow::default()),
            max_in_flight: options.max_in_flight.max(1),
            finite: options.finite,
            owed: VecDeque::new(),
            got_since_request: 0,
            others_waiting: false,
            last_heard: Instant::now(),
            reconnects,
            closed: false,
        })
    }

    fn owed(&self) -> usize {
        self.owed.iter().sum()
    }

    /// Asks for more messages when there is room: at once when nothing is on its way, else only
    /// once half the in-flight limit is free, so requests stay large.
    async fn top_up(&mut self) -> Result<(), BusError> {
        let free = self
            .max_in_flight
            .saturating_sub(self.flow.held() + self.owed());
        let threshold = if self.owed.is_empty() { 1 } else { (self.max_in_flight / 2).max(1) };
        if free < threshold || (self.finite && !self.owed.is_empty()) {
            return Ok(());
        }
        let request = if self.finite && self.others_waiting {
            // Other members' pulls wait for more than is pending, so the server turns `no_wait`
            // away: wait a moment at the back of the queue instead.
            format!(r#"{{"batch":{free},"expires":{}}}"#, FINITE_WAIT.as_nanos())
        } else if self.finite {
            format!(r#"{{"batch":{free},"no_wait":true}}"#)
        } else {
            format!(
                r#"{{"batch":{free},"expires":{},"idle_heartbeat":{}}}"#,
                EXPIRES.as_nanos(),
                HEARTBEAT.as_nanos()
            )
        };
        if self.owed.is_empty() {
            self.last_heard = Instant::now();
        }
        self.client
            .publish_with_reply(self.pull_subject.clone(), self.inbox.clone(), Bytes::from(request))
            .await
            .map_err(|e| self.error("send a pull request", e))?;
        self.owed.push_back(free);
        self.got_since_request = 0;
        self.others_waiting = false;
        Ok(())
    }

    /// A message paid the oldest request.
    fn paid(&mut self) {
        if let Some(front) = self.owed.front_mut() {
            *front = front.saturating_sub(1);
            if *front == 0 {
                self.owed.pop_front();
            }
        }
    }

    /// Handles one message on the inbox: a delivery, or a status about a pull request.
    /// `Ok(Some(None))` means a finite consumer has reached the end.
    async fn handle(&mut self, message: Message) -> Result<Option<Option<Delivery>>, BusError> {
        self.last_heard = Instant::now();
        let status = message.status.unwrap_or(StatusCode::OK);
        if status == StatusCode::OK {
            return Ok(self.delivery(message).map(Some));
        }
        let description = message.description.clone().unwrap_or_default();
        match status {
            StatusCode::IDLE_HEARTBEAT => {}
            StatusCode::TIMEOUT if self.finite && description == "Requests Pending" => {
                self.owed.pop_front();
                self.others_waiting = true;
            }
            StatusCode::TIMEOUT | StatusCode::NOT_FOUND => {
                self.owed.pop_front();
                if self.finite && self.got_since_request == 0 && self.owed.is_empty() {
                    if self.flow.delayed() == 0 {
                        return Ok(Some(None));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            StatusCode::REQUEST_TERMINATED if description.contains("Exceeded MaxWaiting") => {
                self.owed.pop_back();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            StatusCode::REQUEST_TERMINATED if description.contains("Consumer Deleted") => {
                tracing::warn!(topic = %self.topic, group = %self.group,
                    "the durable consumer was deleted on the server; creating it again");
                self.recover().await?;
            }
            StatusCode::NO_RESPONDERS => {
                tracing::debug!(topic = %self.topic, group = %self.group,
                    "no responders for a pull request (JetStream starting, or the consumer is gone)");
                self.recover().await?;
            }
            _ => {
                tracing::warn!(topic = %self.topic, group = %self.group, status = %status,
                    description = %description, "unexpected status on a pull request; asking again");
                self.owed.clear();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        Ok(None)
    }

    fn delivery(&mut self, message: Message) -> Option<Delivery> {
        self.paid();
        self.got_since_request += 1;
        let Some(reply) = message.reply else {
            tracing::warn!(topic = %self.topic, "a message without an ack subject on the pull inbox; ignored");
            return None;
        };
        let count = delivery_count(&reply).unwrap_or_else(|| {
            tracing::warn!(topic = %self.topic, reply = %reply, "cannot read the delivery count; using 1");
            1
        });
        self.flow.take();
        let acker = NatsAcker::new(self.client.clone(), reply, Arc::clone(&self.topic), Arc::clone(&self.flow));
        Some(Delivery::new(&*self.topic, message.payload, count, Box::new(acker)))
    }

    /// After the server lost track of our requests or our consumer: forget the requests, wait a
    /// moment, and make sure the stream and consumer exist (they do unless someone deleted them or
    /// they lived in memory storage).
    async fn recover(&mut self) -> Result<(), BusError> {
        self.owed.clear();
        tokio::time::sleep(RETRY_PAUSE).await;
        self.topology.forget(&self.topic);
        match self.topology.ensure_consumer(&self.topic, &self.group).await {
            Ok(()) => Ok(()),
            Err(e) if e.transient => {
                tracing::debug!(topic = %self.topic, error = %e.error, "JetStream not ready yet");
                Ok(())
            }
            Err(e) => Err(e.error),
        }
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> BusError {
        BusError::broker(
            format!("{what} for topic {:?}, group {:?}", self.topic, self.group),
            e,
        )
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            if self.closed {
                // The inbox is unsubscribed: hand out what had already arrived, then end.
                let Some(message) = self.sub.next().await else {
                    return Ok(None);
                };
                if message.status.is_none() || message.status == Some(StatusCode::OK) {
                    if let Some(delivery) = self.delivery(message) {
                        return Ok(Some(delivery));
                    }
                }
                continue;
            }
            self.top_up().await?;
            let silent_since = self.last_heard;
            let waiting = !self.owed.is_empty() && !self.finite;
            tokio::select! {
                message = self.sub.next() => match message {
                    Some(message) => match self.handle(message).await? {
                        Some(Some(delivery)) => return Ok(Some(delivery)),
                        Some(None) => return Ok(None),
                        None => {}
                    },
                    None => return Err(BusError::Closed(format!(
                        "the NATS connection of the consumer of topic {:?}", self.topic
                    ))),
                },
                () = self.flow.freed.notified() => {}
                () = tokio::time::sleep_until(silent_since + SILENCE), if waiting => {
                    tracing::warn!(topic = %self.topic, group = %self.group,
                        "no word from nats-server for {SILENCE:?}; sending the pull requests again");
                    self.owed.clear();
                }
                Ok(()) = self.reconnects.changed() => {
                    tracing::info!(topic = %self.topic, group = %self.group,
                        "reconnected to nats-server; sending the pull requests again");
                    self.owed.clear();
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        if !self.closed {
            self.closed = true;
            self.sub
                .unsubscribe()
                .await
                .map_err(|e| self.error("unsubscribe the pull inbox", e))?;
        }
        Ok(())
    }
}

/// The delivery count in a JetStream ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>` or, with a domain and
/// account hash, `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.…`.
fn delivery_count(reply: &str) -> Option<u32> {
    let tokens: Vec<&str> = reply.split('.').collect();
    let at = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    if tokens.first() != Some(&"$JS") || tokens.get(1) != Some(&"ACK") {
        return None;
    }
    tokens.get(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::delivery_count;

    #[test]
    fn reads_the_delivery_count_of_both_ack_subject_forms() {
        assert_eq!(delivery_count("$JS.ACK.s.c.3.10.7.1700000000000000000.0"), Some(3));
        assert_eq!(delivery_count("$JS.ACK.dom.hash.s.c.2.10.7.1700000000000000000.0.tok"), Some(2));
        assert_eq!(delivery_count("_INBOX.x"), None);
    }
}
