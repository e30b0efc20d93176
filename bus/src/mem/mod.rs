//! `mem:[NAME]` — an in-process bus for tests and embedding.
//!
//! Every `Bus::connect("mem:NAME")` in one process shares the broker called `NAME` (`mem:` alone is the
//! broker `default`), so two "processes" in a test are two connections to one name. Messages live as
//! long as the process; each topic keeps every message it was sent, so a new group reads from the start.
//! A delivery dropped without ack or nack goes back to its group at once, which is how a crash looks here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::BusUrl;
use crate::{
    Acker, Backend, BusError, Capabilities, Consumer, ConsumerOptions, Delivery, Outgoing,
};

pub(crate) fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    let name = match url.body() {
        "" => "default",
        name => name.trim_start_matches('/'),
    };
    let mut registry = registry().lock().unwrap_or_else(|e| e.into_inner());
    let broker = registry
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(Broker::default()))
        .clone();
    Ok(Arc::new(MemBackend { broker }))
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Broker>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Broker>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

#[derive(Default)]
struct Broker {
    topics: Mutex<HashMap<String, Topic>>,
}

#[derive(Default)]
struct Topic {
    log: Vec<Bytes>,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    /// The next message of the topic's log this group has not seen.
    next: usize,
    /// Messages handed back (nack, drop) waiting to be delivered again, with their delivery counts.
    ready: VecDeque<(Bytes, u32)>,
    /// Nacked messages waiting out their delay.
    delayed: usize,
    in_flight: HashMap<u64, (Bytes, u32)>,
    next_token: u64,
    notify: Arc<Notify>,
}

impl Broker {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts an in-flight message back into its group's queue.
    fn requeue(self: &Arc<Self>, topic: &str, group: &str, token: u64, delay: Option<Duration>) {
        let mut topics = self.lock();
        let Some(g) = topics.get_mut(topic).and_then(|t| t.groups.get_mut(group)) else {
            return;
        };
        let Some(msg) = g.in_flight.remove(&token) else {
            return;
        };
        match delay.filter(|d| !d.is_zero()) {
            None => {
                g.ready.push_back(msg);
                g.notify.notify_waiters();
            }
            Some(delay) => {
                g.delayed += 1;
                let broker = Arc::clone(self);
                let (topic, group) = (topic.to_owned(), group.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut topics = broker.lock();
                    if let Some(g) = topics
                        .get_mut(&topic)
                        .and_then(|t| t.groups.get_mut(&group))
                    {
                        g.delayed -= 1;
                        g.ready.push_back(msg);
                        g.notify.notify_waiters();
                    }
                });
            }
        }
    }
}

struct MemBackend {
    broker: Arc<Broker>,
}

#[async_trait]
impl Backend for MemBackend {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            ..Capabilities::ALL
        }
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        let mut topics = self.broker.lock();
        let t = topics.entry(topic.to_owned()).or_default();
        t.log.push(message.payload);
        for g in t.groups.values() {
            g.notify.notify_waiters();
        }
        Ok(())
    }

    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.broker
            .lock()
            .entry(topic.to_owned())
            .or_default()
            .groups
            .entry(options.group.clone())
            .or_default();
        Ok(Box::new(MemConsumer {
            broker: self.broker.clone(),
            topic: topic.to_owned(),
            group: options.group.clone(),
            finite: options.finite,
            closed: CancellationToken::new(),
        }))
    }

    async fn close(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct MemConsumer {
    broker: Arc<Broker>,
    topic: String,
    group: String,
    finite: bool,
    closed: CancellationToken,
}

#[async_trait]
impl Consumer for MemConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            // A message is usually ready at once, so without this a loop of next and nack never
            // yields: it would starve its runtime thread and no timeout or abort could stop it.
            tokio::task::coop::consume_budget().await;
            if self.closed.is_cancelled() {
                return Ok(None);
            }
            let notify = {
                let mut topics = self.broker.lock();
                let t = topics.entry(self.topic.clone()).or_default();
                let g = t.groups.entry(self.group.clone()).or_default();
                let next = g.ready.pop_front().or_else(|| {
                    let m = t.log.get(g.next).cloned()?;
                    g.next += 1;
                    Some((m, 0))
                });
                if let Some((payload, count)) = next {
                    let count = count + 1;
                    let token = g.next_token;
                    g.next_token += 1;
                    g.in_flight.insert(token, (payload.clone(), count));
                    let acker = MemAcker {
                        broker: self.broker.clone(),
                        topic: self.topic.clone(),
                        group: self.group.clone(),
                        token,
                        settled: false,
                    };
                    return Ok(Some(Delivery::new(
                        self.topic.clone(),
                        payload,
                        count,
                        Box::new(acker),
                    )));
                }
                if self.finite && g.delayed == 0 {
                    return Ok(None);
                }
                g.notify.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Something may have arrived between dropping the lock and enabling the waiter.
            if self.has_ready() {
                continue;
            }
            tokio::select! {
                () = notified => {}
                () = self.closed.cancelled() => return Ok(None),
            }
        }
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.closed.cancel();
        Ok(())
    }
}

impl MemConsumer {
    fn has_ready(&self) -> bool {
        let topics = self.broker.lock();
        topics.get(&self.topic).is_some_and(|t| {
            t.groups
                .get(&self.group)
                .is_some_and(|g| !g.ready.is_empty() || g.next < t.log.len())
        })
    }
}

struct MemAcker {
    broker: Arc<Broker>,
    topic: String,
    group: String,
    token: u64,
    settled: bool,
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settled = true;
        let mut topics = self.broker.lock();
        if let Some(g) = topics
            .get_mut(&self.topic)
            .and_then(|t| t.groups.get_mut(&self.group))
        {
            g.in_flight.remove(&self.token);
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>, delay: Option<Duration>) -> Result<(), BusError> {
        self.settled = true;
        self.broker
            .requeue(&self.topic, &self.group, self.token, delay);
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), BusError> {
        Ok(())
    }
}

impl Drop for MemAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.broker
                .requeue(&self.topic, &self.group, self.token, None);
        }
    }
}
