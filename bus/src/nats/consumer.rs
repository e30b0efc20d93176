//! A durable pull consumer: pull requests sized to the room under `max_in_flight`, sent from
//! [`Consumer::next`] itself, with reconnects and silences watched so a consumer carries on by
//! itself after nats-server restarts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subject, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::acker::{delivery_count, NatsAcker, Settler};
use super::flow::Flow;
use super::pulls::{is_delivery, retire, Pulls};
use super::topology::Topology;
use crate::{BusError, Consumer, ConsumerOptions, Delivery};

/// How long a finite consumer's pull waits when other members' pulls are queued before it.
const FINITE_WAIT: Duration = Duration::from_millis(500);
/// The pause before asking again after the server could not serve a pull request.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How much longer than a pull request's expiry its `408` may take before the request is taken
/// for lost (server restarted, link down, or the server dropped it without a word, which 2.9 does
/// when a delivery finds it just expired).
const GRACE: Duration = Duration::from_secs(1);

/// How long a pull request waits at the server: a little under half the ack wait (between 0.2 s
/// and 30 s), so that its expiries do not fall in step with lease expiries. nats-server 2.9
/// mishandles a redelivery that finds only just-expired requests waiting (see `pulls`).
fn pull_expiry(ack_wait: Duration) -> Duration {
    ack_wait
        .mul_f64(0.45)
        .clamp(Duration::from_millis(200), Duration::from_secs(30))
}

/// One consumer of one topic in one group.
pub(super) struct NatsConsumer {
    client: Client,
    topology: Arc<Topology>,
    topic: Arc<str>,
    group: String,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    pull_subject: String,
    inbox: String,
    /// The pull inbox; `None` once closed.
    sub: Option<Subscriber>,
    /// Messages fetched and not handed out yet, with when they arrived: at most `max_in_flight`
    /// beyond those held, and only while deliveries are settled quickly (see `top_up`).
    ready: VecDeque<(Message, Instant)>,
    /// Messages that had arrived when the consumer closed, still to be handed out.
    after_close: VecDeque<Message>,
    flow: Arc<Flow>,
    /// What the ackers of this consumer's deliveries share.
    settler: Arc<Settler>,
    max_in_flight: usize,
    finite: bool,
    /// How long a pull request waits at the server (see [`pull_expiry`]).
    expires: Duration,
    pulls: Pulls,
    /// Messages delivered since the last `no_wait` request was sent (finite consumers).
    got_since_request: usize,
    /// The server said other pulls of the group wait for more than is pending (finite consumers).
    others_waiting: bool,
    last_heard: Instant,
    /// When `next` last handed out a delivery, while the caller has it.
    returned_at: Option<Instant>,
    reconnects: watch::Receiver<u64>,
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
            BusError::broker(
                format!("subscribe to the pull inbox for topic {topic:?}"),
                e,
            )
        })?;
        let pull_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            topology.stream(topic),
            Topology::consumer(&options.group)
        );
        let expires = pull_expiry(topology.options().ack_wait);
        let flow = Arc::new(Flow::default());
        let settler = Arc::new(Settler {
            client: client.clone(),
            reconnects: reconnects.clone(),
            topic: Arc::from(topic),
            flow: Arc::clone(&flow),
            confirm_acks: topology.options().confirm_acks,
        });
        Ok(NatsConsumer {
            client,
            topology,
            topic: Arc::from(topic),
            group: options.group.clone(),
            pull_subject,
            inbox,
            sub: Some(sub),
            ready: VecDeque::new(),
            after_close: VecDeque::new(),
            flow,
            settler,
            max_in_flight: options.max_in_flight.max(1),
            finite: options.finite,
            expires,
            pulls: Pulls::default(),
            got_since_request: 0,
            others_waiting: false,
            last_heard: Instant::now(),
            returned_at: None,
            reconnects,
        })
    }

    /// Asks for more messages when there is room: at once when nothing is on its way, else only
    /// once half the in-flight limit is free, so requests stay large. While deliveries are settled
    /// quickly it fetches up to `max_in_flight` ahead, so a free slot finds a message waiting
    /// instead of a round trip; while they are slow (or the consumer is finite) it fetches only
    /// what it can hand out. A finite consumer has one request out at a time.
    async fn top_up(&mut self) -> Result<(), BusError> {
        let ahead = if !self.finite && self.flow.is_fast() {
            self.max_in_flight
        } else {
            0
        };
        let free = (self.max_in_flight + ahead)
            .saturating_sub(self.flow.held() + self.ready.len() + self.pulls.owed());
        let threshold = if self.pulls.is_empty() {
            1
        } else {
            (self.max_in_flight / 2).max(1)
        };
        if free < threshold || (self.finite && !self.pulls.is_empty()) {
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
                r#"{{"batch":{free},"expires":{}}}"#,
                self.expires.as_nanos()
            )
        };
        if self.pulls.is_empty() {
            self.last_heard = Instant::now();
        }
        self.client
            .publish_with_reply(
                self.pull_subject.clone(),
                self.inbox.clone(),
                Bytes::from(request),
            )
            .await
            .map_err(|e| self.error("send a pull request", e))?;
        self.pulls.sent(free);
        self.got_since_request = 0;
        self.others_waiting = false;
        Ok(())
    }

    /// Handles one message on the inbox: a delivery (kept in `ready`), or a status about a pull
    /// request. `Ok(true)` means a finite consumer has reached the end.
    async fn handle(&mut self, message: Message) -> Result<bool, BusError> {
        self.last_heard = Instant::now();
        if is_delivery(&message) {
            self.pulls.paid();
            self.got_since_request += 1;
            self.ready.push_back((message, Instant::now()));
            return Ok(false);
        }
        let status = message.status.unwrap_or(StatusCode::OK);
        let description = message.description.unwrap_or_default();
        match status {
            StatusCode::IDLE_HEARTBEAT => {}
            StatusCode::TIMEOUT if self.finite && description == "Requests Pending" => {
                self.pulls.oldest_ended();
                self.others_waiting = true;
            }
            StatusCode::TIMEOUT | StatusCode::NOT_FOUND => {
                self.pulls.oldest_ended();
                let nothing_more = self.got_since_request == 0 && self.ready.is_empty();
                if self.finite && nothing_more && self.pulls.is_empty() {
                    if self.flow.delayed() == 0 {
                        return Ok(true);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            StatusCode::REQUEST_TERMINATED if description.contains("Exceeded MaxWaiting") => {
                self.pulls.newest_refused();
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
                self.pulls.lost();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        Ok(false)
    }

    /// The oldest fetched message, when a slot is free. One that waited so long its lease may
    /// have run out is let go (the server hands it out again): handing it out could mean two
    /// workers on one task.
    fn hand_out(&mut self) -> Option<Delivery> {
        let stale = self.stale_after();
        while self.flow.held() < self.max_in_flight {
            let (message, arrived) = self.ready.pop_front()?;
            if arrived.elapsed() < stale {
                if let Some(delivery) = self.delivery(message) {
                    return Some(delivery);
                }
            } else {
                tracing::debug!(topic = %self.topic,
                    "a fetched message waited out most of its lease; letting the server hand it out again");
            }
        }
        None
    }

    fn delivery(&self, message: Message) -> Option<Delivery> {
        let Some(reply) = message.reply else {
            tracing::warn!(topic = %self.topic, "a message without an ack subject on the pull inbox; ignored");
            return None;
        };
        let count = delivery_count(&reply).unwrap_or_else(|| {
            tracing::warn!(topic = %self.topic, reply = %reply, "cannot read the delivery count; using 1");
            1
        });
        self.flow.take();
        let acker = NatsAcker::new(Arc::clone(&self.settler), reply);
        Some(Delivery::new(
            &*self.topic,
            message.payload,
            count,
            Box::new(acker),
        ))
    }

    /// After the server lost track of our requests or our consumer: forget the requests, wait a
    /// moment, and make sure the stream and consumer exist (they do unless someone deleted them or
    /// they lived in memory storage).
    async fn recover(&mut self) -> Result<(), BusError> {
        self.pulls.lost();
        tokio::time::sleep(RETRY_PAUSE).await;
        self.topology.forget(&self.topic);
        match self
            .topology
            .ensure_consumer(&self.topic, &self.group)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.transient => {
                tracing::debug!(topic = %self.topic, error = %e.error, "JetStream not ready yet");
                Ok(())
            }
            Err(e) => Err(e.error),
        }
    }

    /// Hands the inbox to [`retire`] in the background, with `held` to nack once it is done.
    fn retire(&mut self, sub: Subscriber, held: Vec<Subject>) {
        let pulls = std::mem::take(&mut self.pulls);
        let patience = self.expires + GRACE;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(retire(self.client.clone(), sub, pulls, held, patience));
            }
            Err(_) => drop(sub),
        }
    }

    /// The next delivery: one fetched already, else after asking the server and waiting.
    async fn wait_next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            if self.sub.is_none() {
                while let Some(message) = self.after_close.pop_front() {
                    if let Some(delivery) = self.delivery(message) {
                        return Ok(Some(delivery));
                    }
                }
                return Ok(None);
            }
            if let Some(delivery) = self.hand_out() {
                return Ok(Some(delivery));
            }
            self.top_up().await?;
            // The common case under load: a message is already there; no timers, no select.
            let arrived = self.sub.as_mut().and_then(|sub| sub.next().now_or_never());
            if let Some(Some(message)) = arrived {
                if self.handle(message).await? {
                    return Ok(None);
                }
                continue;
            }
            let silent_since = self.last_heard;
            let waiting = !self.pulls.is_empty();
            let expiry = if self.finite {
                FINITE_WAIT
            } else {
                self.expires
            };
            let Some(sub) = self.sub.as_mut() else {
                continue;
            };
            tokio::select! {
                message = sub.next() => match message {
                    Some(message) => if self.handle(message).await? {
                        return Ok(None);
                    },
                    None => return Err(BusError::Closed(format!(
                        "the NATS connection of the consumer of topic {:?}", self.topic
                    ))),
                },
                () = self.flow.freed.notified() => {}
                () = tokio::time::sleep_until(silent_since + expiry + GRACE), if waiting => {
                    tracing::warn!(topic = %self.topic, group = %self.group,
                        "no word from nats-server about our pull requests; sending them again");
                    self.pulls.lost();
                }
                Ok(()) = self.reconnects.changed() => {
                    tracing::info!(topic = %self.topic, group = %self.group,
                        "reconnected to nats-server; sending the pull requests again");
                    self.pulls.lost();
                }
            }
        }
    }

    /// How long a fetched message may wait before its lease may have run out (and the server
    /// may have handed it to someone else): most of the ack wait.
    fn stale_after(&self) -> Duration {
        self.topology.options().ack_wait.mul_f64(0.8)
    }

    /// After the caller stayed away longer than [`Self::stale_after`], messages that arrived
    /// meanwhile may be stale: let them go (the server hands each out again after its ack wait)
    /// rather than have two workers on one task.
    fn let_go_of_unread(&mut self) {
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        let mut let_go = 0;
        while let Some(Some(message)) = sub.next().now_or_never() {
            if is_delivery(&message) {
                self.pulls.paid();
                let_go += 1;
            } else if matches!(
                message.status,
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND)
            ) {
                self.pulls.oldest_ended();
            }
        }
        if let_go > 0 {
            tracing::debug!(topic = %self.topic, let_go,
                "messages fetched while the caller was away too long; the server will hand them out again");
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
        if let Some(at) = self.returned_at.take() {
            if at.elapsed() > self.stale_after() {
                self.let_go_of_unread();
            }
        }
        let next = self.wait_next().await;
        if let Ok(Some(_)) = next {
            self.returned_at = Some(Instant::now());
        }
        next
    }

    async fn close(&mut self) -> Result<(), BusError> {
        let Some(mut sub) = self.sub.take() else {
            return Ok(());
        };
        // What has arrived is still handed out; what the open requests bring later goes back.
        self.after_close
            .extend(self.ready.drain(..).map(|(message, _)| message));
        while let Some(Some(message)) = sub.next().now_or_never() {
            if is_delivery(&message) {
                self.pulls.paid();
                self.after_close.push_back(message);
            } else if matches!(
                message.status,
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND)
            ) {
                self.pulls.oldest_ended();
            }
        }
        self.retire(sub, Vec::new());
        Ok(())
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        // Messages that arrived but were never handed out go back at once, not after the ack
        // wait; the inbox stays until the open requests have ended (see `pulls`).
        let unsent = self.ready.drain(..).map(|(message, _)| message);
        let held: Vec<Subject> = unsent
            .chain(self.after_close.drain(..))
            .filter_map(|m| m.reply)
            .collect();
        match self.sub.take() {
            Some(sub) => self.retire(sub, held),
            None if held.is_empty() => {}
            None => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let client = self.client.clone();
                    runtime.spawn(async move {
                        for reply in held {
                            let _ = client.publish(reply, Bytes::from_static(b"-NAK")).await;
                        }
                    });
                }
            }
        }
    }
}
