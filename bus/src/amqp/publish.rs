//! Publishing with confirms on one shared confirm-mode channel, reopened when lost.

use std::sync::Mutex;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel};

use super::link::{with_retries, Failure, Link};
use super::topology;
use crate::BusError;

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    /// A topic of the bus's exchange.
    Topic(&'a str),
    /// One queue, through the default exchange.
    Queue(&'a str),
}

/// What RabbitMQ did with a published message.
enum Outcome {
    Stored,
    /// No queue took it (only for `mandatory` publishes, which all of ours are).
    Returned,
}

/// The publishing side of the bus: concurrent calls share one channel, so each waits only for its
/// own confirm and many are in flight at once.
pub(crate) struct Publisher {
    link: Link,
    channel: Mutex<Option<Channel>>,
    /// Held while opening a channel, so one caller opens it and the others wait.
    opening: tokio::sync::Mutex<()>,
}

impl Publisher {
    /// A publisher on `link`; its channel opens on first use.
    pub(crate) fn new(link: Link) -> Publisher {
        Publisher {
            link,
            channel: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection this publisher uses.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Opens the channel now, so a bad exchange or refused permission shows at connect time.
    pub(crate) async fn open(&self) -> Result<(), BusError> {
        self.channel().await.map(drop).map_err(|f| f.error)
    }

    /// Publishes to `topic` and waits for the confirm. A message no group's queue takes is kept in
    /// the topic's backlog queue (declared and bound on the way).
    pub(crate) async fn send(
        &self,
        topic: &str,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<(), BusError> {
        let what = format!("publish to topic {topic:?}");
        let outcome = with_retries(&self.link, &what, || {
            self.publish(Route::Topic(topic), payload, props)
        })
        .await?;
        if let Outcome::Returned = outcome {
            with_retries(&self.link, &what, || {
                self.keep_in_backlog(topic, payload, props)
            })
            .await?;
        }
        Ok(())
    }

    /// Publishes straight to `queue` and waits for the confirm.
    pub(crate) async fn send_to_queue(
        &self,
        queue: &str,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<(), BusError> {
        let what = format!("publish to queue {queue:?}");
        match with_retries(&self.link, &what, || {
            self.publish(Route::Queue(queue), payload, props)
        })
        .await?
        {
            Outcome::Stored => Ok(()),
            Outcome::Returned => Err(BusError::broker(what, "RabbitMQ has no such queue")),
        }
    }

    /// Declares the delay queue of `group_queue` for `delay_ms` and returns its name.
    pub(crate) async fn declare_delay_queue(
        &self,
        group_queue: &str,
        delay_ms: u32,
    ) -> Result<String, BusError> {
        with_retries(&self.link, "declare a delay queue", || async {
            let channel = self.channel().await?;
            let declared =
                topology::declare_delay_queue(&channel, self.link.options(), group_queue, delay_ms)
                    .await;
            declared.inspect_err(|_| self.forget(&channel))
        })
        .await
    }

    async fn publish(
        &self,
        route: Route<'_>,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<Outcome, Failure> {
        let channel = self.channel().await?;
        let (exchange, key, what) = match route {
            Route::Topic(topic) => (self.link.options().exchange.as_str(), topic, "topic"),
            Route::Queue(queue) => ("", queue, "queue"),
        };
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let op = || format!("publish to {what} {key:?}");
        let confirmed = async {
            let confirm = channel
                .basic_publish(exchange, key, options, payload, props.clone())
                .await?;
            confirm.await
        };
        match confirmed.await {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(Outcome::Stored),
            Ok(Confirmation::Ack(Some(_))) => Ok(Outcome::Returned),
            Ok(Confirmation::Nack(_)) => Err(Failure::fatal(BusError::broker(
                op(),
                "RabbitMQ refused to store the message (negative confirm): is a queue full \
                 (x-overflow=reject-publish) or is the broker short of disk or memory?",
            ))),
            Err(e) => {
                self.forget(&channel);
                Err(Failure::lapin(op(), &e))
            }
        }
    }

    async fn keep_in_backlog(
        &self,
        topic: &str,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<Outcome, Failure> {
        let channel = self.channel().await?;
        let backlog = topology::declare_backlog(&channel, self.link.options(), topic)
            .await
            .inspect_err(|_| self.forget(&channel))?;
        tracing::debug!(topic, backlog = %backlog, "no group's queue is bound to the topic; keeping the message in its backlog");
        match self.publish(Route::Queue(&backlog), payload, props).await? {
            Outcome::Stored => Ok(Outcome::Stored),
            Outcome::Returned => Err(Failure {
                error: BusError::broker(
                    format!("publish to queue {backlog:?}"),
                    "the queue vanished",
                ),
                retry: true,
            }),
        }
    }

    /// The open channel, opening one (on a connection that reconnects) when there is none.
    async fn channel(&self) -> Result<Channel, Failure> {
        if let Some(channel) = self.current() {
            return Ok(channel);
        }
        let _only_one = self.opening.lock().await;
        if let Some(channel) = self.current() {
            return Ok(channel);
        }
        let connection = self.link.connection().await.map_err(Failure::fatal)?;
        let op = "open a publishing channel";
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Failure::lapin(op, &e))?;
        let confirms = channel
            .confirm_select(ConfirmSelectOptions::default())
            .await;
        confirms.map_err(|e| Failure::lapin(op, &e))?;
        topology::declare_exchange(&channel, self.link.options()).await?;
        *self.lock() = Some(channel.clone());
        Ok(channel)
    }

    fn current(&self) -> Option<Channel> {
        self.lock()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    /// Drops `channel` from the cache (if it is still the cached one) after it failed.
    fn forget(&self, channel: &Channel) {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|c| c.id() == channel.id()) {
            *current = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }
}
