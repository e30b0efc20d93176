//! The pull requests of one consumer: what each still owes, and retiring them when the consumer
//! closes.
//!
//! Every pull request of a consumer goes to its one inbox. The server serves a consumer's waiting
//! requests oldest first, so a queue of what each outstanding request still owes is exact: a message
//! pays the oldest, and a `408 Request Timeout` (or, for `no_wait`, `404 No Messages`) closes it.
//!
//! A consumer never leaves a pull request waiting behind an inbox it no longer reads. nats-server
//! 2.9 mishandles a redelivery (after a nack or an ack wait) that finds only such requests, or only
//! requests that have just expired, waiting: it rewinds the consumer's position, so the newest
//! message is delivered a second time (with a delivery count of 1), and the redelivered one waits a
//! further ack wait. So a closing consumer keeps its inbox until its last request has ended,
//! holding whatever those requests still bring, and only then unsubscribes and hands the held
//! messages back with `-NAK`; and request expiries are kept out of step with lease expiries (see
//! `pull_expiry` in `consumer`).

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, Message, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

/// What each outstanding pull request still owes, oldest first.
#[derive(Debug, Default)]
pub(super) struct Pulls {
    owed: VecDeque<usize>,
}

impl Pulls {
    /// Messages asked for and not yet received.
    pub(super) fn owed(&self) -> usize {
        self.owed.iter().sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// A request for `batch` messages was sent.
    pub(super) fn sent(&mut self, batch: usize) {
        self.owed.push_back(batch);
    }

    /// A message arrived: it pays the oldest request.
    pub(super) fn paid(&mut self) {
        if let Some(front) = self.owed.front_mut() {
            *front = front.saturating_sub(1);
            if *front == 0 {
                self.owed.pop_front();
            }
        }
    }

    /// The oldest request ended (expired, or `no_wait` found nothing more).
    pub(super) fn oldest_ended(&mut self) {
        self.owed.pop_front();
    }

    /// The newest request was turned away.
    pub(super) fn newest_refused(&mut self) {
        self.owed.pop_back();
    }

    /// The server lost every request (restart, reconnect, consumer recreated).
    pub(super) fn lost(&mut self) {
        self.owed.clear();
    }
}

/// True when `message` on a pull inbox is a message of the stream rather than a status.
pub(super) fn is_delivery(message: &Message) -> bool {
    matches!(message.status, None | Some(StatusCode::OK))
}

/// Keeps reading `sub` until every request in `pulls` has ended (or `patience` has passed),
/// holding what they bring; then unsubscribes and nacks the held messages and `held`, so they go
/// to other members at once. Runs in the background after a consumer closes or is dropped.
pub(super) async fn retire(
    client: Client,
    mut sub: Subscriber,
    mut pulls: Pulls,
    mut held: Vec<Subject>,
    patience: Duration,
) {
    let deadline = Instant::now() + patience;
    while !pulls.is_empty() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        take(&mut pulls, &mut held, message);
    }
    while let Some(Some(message)) = sub.next().now_or_never() {
        take(&mut pulls, &mut held, message);
    }
    drop(sub);
    for reply in held {
        let _ = client.publish(reply, Bytes::from_static(b"-NAK")).await;
    }
}

fn take(pulls: &mut Pulls, held: &mut Vec<Subject>, message: Message) {
    if is_delivery(&message) {
        pulls.paid();
        held.extend(message.reply);
    } else if matches!(
        message.status,
        Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND | StatusCode::REQUEST_TERMINATED)
    ) {
        pulls.oldest_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::Pulls;

    #[test]
    fn messages_pay_the_oldest_request_first() {
        let mut p = Pulls::default();
        p.sent(2);
        p.sent(3);
        assert_eq!(p.owed(), 5);
        p.paid();
        p.paid();
        assert_eq!(p.owed(), 3);
        p.oldest_ended();
        assert!(p.is_empty());
        p.sent(1);
        p.sent(4);
        p.newest_refused();
        assert_eq!(p.owed(), 1);
        p.lost();
        assert!(p.is_empty());
    }
}
