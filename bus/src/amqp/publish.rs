//! Publishing with confirms on one shared confirm-mode channel, reopened when lost.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel};

use super::link::{with_retries, Failure, Link};
use super::topology;
use crate::BusError;

/// The publishing side of the bus: concurrent calls share one channel, so each waits only for its
/// own confirm and many are in flight at once.
pub(crate) struct Publisher {
    link: Arc<Link>,
    state: Mutex<State>,
    /// Held while opening a channel, so one caller opens it and the others wait.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    channel: Option<Arc<Channel>>,
    /// Topics whose backlog queue is declared (since the channel opened).
    backlogs: HashSet<String>,
}

impl Publisher {
    /// A publisher on `link`; its channel opens on first use.
    pub(crate) fn new(link: Arc<Link>) -> Publisher {
        Publisher {
            link,
            state: Mutex::default(),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The connection this publisher uses.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Opens the channel now, so a bad exchange or refused permission shows at connect time.
    pub(crate) async fn open(&self) -> Result<(), BusError> {
        self.channel().await.map(drop).map_err(|f| f.error)
    }

    /// Publishes to `topic` and waits for the confirm. The topic's backlog queue is declared first
    /// (once per channel), so a message no group's queue takes is kept there.
    pub(crate) async fn send(
        &self,
        topic: &str,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<(), BusError> {
        let what = format!("publish to topic {topic:?}");
        with_retries(&self.link, &what, || async {
            let channel = self.channel().await?;
            if !self.lock().backlogs.contains(topic) {
                topology::declare_backlog(&channel, self.link.options(), topic)
                    .await
                    .inspect_err(|_| self.forget(&channel))?;
                self.lock().backlogs.insert(topic.to_owned());
            }
            let exchange = self.link.options().exchange.as_str();
            let options = BasicPublishOptions::default();
            self.publish(&channel, exchange, topic, options, payload, props)
                .await
                .map(drop)
        })
        .await
    }

    /// Publishes straight to `queue` and waits for the confirm; fails if the queue does not exist.
    pub(crate) async fn send_to_queue(
        &self,
        queue: &str,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<(), BusError> {
        let what = format!("publish to queue {queue:?}");
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let routed = with_retries(&self.link, &what, || async {
            let channel = self.channel().await?;
            self.publish(&channel, "", queue, options, payload, props)
                .await
        })
        .await?;
        match routed {
            true => Ok(()),
            false => Err(BusError::broker(what, "RabbitMQ has no such queue")),
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
            let options = self.link.options();
            topology::declare_delay_queue(&channel, options, group_queue, delay_ms)
                .await
                .inspect_err(|_| self.forget(&channel))
        })
        .await
    }

    /// Publishes on `channel` and waits for the confirm; `Ok(false)` when a mandatory message was
    /// returned unroutable.
    async fn publish(
        &self,
        channel: &Channel,
        exchange: &str,
        key: &str,
        options: BasicPublishOptions,
        payload: &[u8],
        props: &BasicProperties,
    ) -> Result<bool, Failure> {
        let op = || {
            let to = if exchange.is_empty() {
                "queue"
            } else {
                "topic"
            };
            format!("publish to {to} {key:?}")
        };
        let confirmed = async {
            let confirm = channel
                .basic_publish(exchange, key, options, payload, props.clone())
                .await?;
            confirm.await
        };
        match confirmed.await {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(true),
            Ok(Confirmation::Ack(Some(_))) => Ok(false),
            Ok(Confirmation::Nack(_)) => Err(Failure::fatal(BusError::broker(
                op(),
                "RabbitMQ refused to store the message (negative confirm): is a queue full \
                 (x-overflow=reject-publish) or is the broker short of disk or memory?",
            ))),
            Err(e) => {
                self.forget(channel);
                Err(Failure::lapin(op(), &e))
            }
        }
    }

    /// The open channel, opening one (on a connection that reconnects) when there is none.
    async fn channel(&self) -> Result<Arc<Channel>, Failure> {
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
        topology::declare_exchanges(&channel, self.link.options()).await?;
        let channel = Arc::new(channel);
        *self.lock() = State {
            channel: Some(channel.clone()),
            backlogs: HashSet::new(),
        };
        Ok(channel)
    }

    fn current(&self) -> Option<Arc<Channel>> {
        self.lock()
            .channel
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    /// Drops `channel` from the cache (if it is still the cached one) after it failed.
    fn forget(&self, channel: &Channel) {
        let mut state = self.lock();
        if state
            .channel
            .as_ref()
            .is_some_and(|c| c.id() == channel.id())
        {
            state.channel = None;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
