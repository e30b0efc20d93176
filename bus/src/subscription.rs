//! A subscription: a consumer that yields decoded tasks and dead-letters what it cannot use.

use std::time::Duration;

use crate::{BusError, Consumer, DeadLetter, Delivery, Outgoing, Task};

use crate::bus::Bus;

/// Decoded tasks from one topic for one group.
///
/// A message that is not a valid task, or that was delivered more than the bus's `max_deliveries`,
/// is published to the dead-letter topic with the reason and then acked; the subscription carries on.
/// If the dead letter cannot be published, the message is nacked instead, so nothing is lost.
pub struct Subscription {
    consumer: Box<dyn Consumer>,
    bus: Bus,
    topic: String,
    group: String,
}

/// A task received from a subscription, to be acked or nacked.
#[derive(Debug)]
pub struct Received {
    /// The task.
    pub task: Task,
    delivery: Delivery,
}

impl Received {
    /// The topic it came from.
    pub fn topic(&self) -> &str {
        self.delivery.topic()
    }

    /// How many times it has been handed to this group (1 the first time).
    pub fn delivery_count(&self) -> u32 {
        self.delivery.delivery_count()
    }

    /// Acknowledges it.
    pub async fn ack(self) -> Result<(), BusError> {
        self.delivery.ack().await
    }

    /// Hands it out again, after `delay` when given.
    pub async fn nack(self, delay: Option<Duration>) -> Result<(), BusError> {
        self.delivery.nack(delay).await
    }

    /// Extends its lease while work goes on.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.delivery.in_progress().await
    }

    /// The task and the delivery that settles it.
    pub fn into_parts(self) -> (Task, Delivery) {
        (self.task, self.delivery)
    }
}

impl Subscription {
    pub(crate) fn new(consumer: Box<dyn Consumer>, bus: Bus, topic: &str, group: &str) -> Self {
        Subscription {
            consumer,
            bus,
            topic: topic.to_owned(),
            group: group.to_owned(),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Waits for the next valid task; `Ok(None)` once the subscription has ended (closed, or a finite
    /// input reached its end).
    pub async fn next(&mut self) -> Result<Option<Received>, BusError> {
        loop {
            let Some(delivery) = self.consumer.next().await? else {
                return Ok(None);
            };
            let max = self.bus.options().max_deliveries;
            if delivery.delivery_count() > max {
                let reason = format!(
                    "delivered {} times, more than max_deliveries={max}",
                    delivery.delivery_count()
                );
                dead_letter_to_end(&self.bus, &self.topic, &self.group, delivery, reason).await?;
                continue;
            }
            match Task::from_json(&delivery.payload) {
                Ok(task) => return Ok(Some(Received { task, delivery })),
                Err(e) => {
                    dead_letter_to_end(
                        &self.bus,
                        &self.topic,
                        &self.group,
                        delivery,
                        e.to_string(),
                    )
                    .await?;
                }
            }
        }
    }

    /// Stops fetching; tasks already received can still be acked.
    pub async fn close(&mut self) -> Result<(), BusError> {
        self.consumer.close().await
    }
}

/// Runs [`dead_letter`] in a task of its own, so that it completes (the dead letter published *and*
/// the delivery acked) even when the caller stops waiting, as a `select!` over [`Subscription::next`]
/// does: cancelled between the two, the delivery would be dropped unacked, then delivered and
/// dead-lettered again.
async fn dead_letter_to_end(
    bus: &Bus,
    topic: &str,
    group: &str,
    delivery: Delivery,
    reason: String,
) -> Result<(), BusError> {
    let (bus, topic, group) = (bus.clone(), topic.to_owned(), group.to_owned());
    let task =
        tokio::spawn(async move { dead_letter(&bus, &topic, &group, delivery, reason).await });
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(BusError::broker("dead-lettering a message", e)),
    }
}

/// Publishes `delivery` to the dead-letter topic with `reason`, then acks it. Takes the fields it needs
/// rather than `&Subscription`, whose consumer is `Send` but not `Sync`: holding `&Subscription`
/// across an await would make [`Subscription::next`]'s future not `Send`, so no one could spawn it.
async fn dead_letter(
    bus: &Bus,
    topic: &str,
    group: &str,
    delivery: Delivery,
    reason: String,
) -> Result<(), BusError> {
    let letter = DeadLetter {
        topic: topic.to_owned(),
        group: group.to_owned(),
        reason,
        delivery_count: delivery.delivery_count(),
        at: crate::task::time::now(),
        payload: String::from_utf8_lossy(&delivery.payload).into_owned(),
    };
    let dead_topic = &bus.options().dead_letter;
    tracing::warn!(
        topic = %topic, group = %group, dead_letter = %dead_topic,
        reason = %letter.reason, "message moved to the dead-letter topic"
    );
    let sent = bus
        .send_message(dead_topic, Outgoing::new(letter.to_json_bytes()))
        .await;
    match sent {
        Ok(()) => delivery.ack().await,
        Err(e) => {
            tracing::error!(topic = %topic, error = %e,
                "cannot publish a dead letter; the message is nacked and stays on the bus");
            delivery.nack(Some(Duration::from_secs(1))).await?;
            Err(e)
        }
    }
}
