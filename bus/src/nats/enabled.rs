//! The NATS JetStream backend: connecting, publishing, and opening consumers.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::{ContextBuilder, PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::consumer::NatsConsumer;
use super::options::NatsOptions;
use super::topology::Topology;
use crate::config::BusUrl;
use crate::{Backend, BusError, Capabilities, Consumer, ConsumerOptions, Outgoing};

/// The pause between publish attempts while the server is unreachable.
const PUBLISH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How to start a server, for connection errors.
const START_HINT: &str = "is nats-server running? start it with JetStream: \
                          `nats-server -js -sd DIR` (or run scripts/brokers/nats.sh)";

pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    let options = NatsOptions::from_url(url)?;
    // Every option is taken by now: report a misspelt one before trying to connect.
    url.finish()?;
    let (reconnected, reconnects) = watch::channel(0u64);
    let client = connect_options(&options, reconnected)
        .await
        .map_err(|e| connect_error(url, &options, e.to_string(), "check the creds file path"))?
        .connect(options.servers.clone())
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    "check the user:password, token, nkey or creds given in the URL"
                }
                ConnectErrorKind::Tls => {
                    "check the server's TLS setup and the tls / tls_ca options"
                }
                _ => START_HINT,
            };
            connect_error(url, &options, connect_reason(&e), hint)
        })?;
    let js = ContextBuilder::new()
        .timeout(options.request_timeout)
        .max_ack_inflight(16_384)
        .backpressure_on_inflight(true)
        .build(client.clone());
    check_jetstream(&client)
        .await
        .map_err(|reason| connect_error(url, &options, reason, JETSTREAM_HINT))?;
    Ok(Arc::new(NatsBackend {
        client,
        topology: Arc::new(Topology::new(js, options)),
        reconnects,
        closed: AtomicBool::new(false),
    }))
}

async fn connect_options(
    options: &NatsOptions,
    reconnected: watch::Sender<u64>,
) -> std::io::Result<ConnectOptions> {
    let auth = &options.auth;
    let mut c = match &auth.creds {
        Some(path) => ConnectOptions::with_credentials_file(path).await?,
        None => ConnectOptions::new(),
    };
    if let Some((user, pass)) = &auth.user {
        c = c.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &auth.token {
        c = c.token(token.clone());
    }
    if let Some(seed) = &auth.nkey {
        c = c.nkey(seed.clone());
    }
    if let Some(ca) = &options.tls_ca {
        c = c.add_root_certificates(ca.clone());
    }
    let reconnected = Arc::new(reconnected);
    Ok(c.require_tls(options.tls)
        .name(&options.name)
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(options.request_timeout))
        .event_callback(move |event| {
            let reconnected = Arc::clone(&reconnected);
            async move { on_event(&event, &reconnected) }
        }))
}

const JETSTREAM_HINT: &str = "the server has JetStream disabled: start nats-server with -js (or a \
                              `jetstream {}` block in its config), and check that this account has JetStream enabled";

/// Asks the JetStream API for the account's info: no one answers when JetStream is off.
async fn check_jetstream(client: &Client) -> Result<(), String> {
    let reply = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                "JetStream is not enabled (no responders on $JS.API.INFO)".to_owned()
            }
            _ => format!("JetStream did not answer: {e}"),
        })?;
    #[derive(serde::Deserialize)]
    struct Info {
        error: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Info>(&reply.payload) {
        Ok(Info { error: Some(error) }) => Err(format!("JetStream refused this account: {error}")),
        _ => Ok(()),
    }
}

fn on_event(event: &Event, reconnected: &watch::Sender<u64>) {
    match event {
        Event::Connected => {
            tracing::info!("connected to nats-server");
            reconnected.send_modify(|n| *n += 1);
        }
        Event::Disconnected => tracing::warn!("disconnected from nats-server; reconnecting"),
        Event::LameDuckMode => tracing::warn!("nats-server is shutting down (lame duck mode)"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(sid, "slow consumer: nats-server dropped messages");
        }
        other => tracing::debug!(event = %other, "nats event"),
    }
}

/// What went wrong connecting, in plain words: `connection refused` rather than
/// `IO error: Connection refused (os error 111)`.
fn connect_reason(e: &async_nats::ConnectError) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        source = err.source();
    }
    e.to_string()
}

fn connect_error(url: &BusUrl, options: &NatsOptions, reason: String, hint: &str) -> BusError {
    let shown = match url.redacted().split_once('?') {
        Some((base, _)) => base.to_owned(),
        None => url.redacted(),
    };
    let shown = if shown.contains(',') {
        options.servers_display()
    } else {
        shown
    };
    BusError::Connect {
        url: shown,
        reason,
        hint: hint.to_owned(),
    }
}

/// How one try at sending failed.
enum Attempt {
    /// The server may take it later (unreachable, restarting, slow): try again until
    /// `publish_timeout`.
    Retry(String),
    /// Trying again cannot help.
    Fatal(BusError),
}

struct NatsBackend {
    client: Client,
    topology: Arc<Topology>,
    reconnects: watch::Receiver<u64>,
    closed: AtomicBool,
}

impl NatsBackend {
    fn check_open(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed(format!(
                "the NATS bus {}",
                self.topology.options().servers_display()
            )));
        }
        Ok(())
    }

    /// One try at sending: makes sure the topic's stream exists (asking the server only the first
    /// time), publishes, and waits for the JetStream ack.
    async fn attempt(&self, topic: &str, subject: &str, message: &Outgoing) -> Result<(), Attempt> {
        match self.topology.ensure_stream(topic).await {
            Ok(_) => {}
            Err(e) if e.transient => return Err(Attempt::Retry(e.error.to_string())),
            Err(e) => return Err(Attempt::Fatal(e.error)),
        }
        let err = match self.publish(subject, message).await {
            Ok(ack) => {
                if ack.duplicate {
                    tracing::debug!(topic, dedup_id = ?message.dedup_id, "duplicate dropped by JetStream");
                }
                return Ok(());
            }
            Err(err) => err,
        };
        let op = || format!("publish to topic {topic:?} (subject {subject})");
        match err.kind() {
            // Deleted since we looked, or JetStream still loading its streams after a restart.
            PublishErrorKind::StreamNotFound => {
                self.topology.forget(topic);
                Err(Attempt::Retry(err.to_string()))
            }
            PublishErrorKind::MaxPayloadExceeded => Err(Attempt::Fatal(BusError::broker(
                op(),
                format!(
                    "{err}: the message has {} bytes, over the server's max_payload of {} bytes; \
                     raise max_payload in the nats-server config or send smaller tasks",
                    message.payload.len(),
                    self.client.server_info().max_payload
                ),
            ))),
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::Other
            | PublishErrorKind::MaxAckPending => Err(Attempt::Retry(err.to_string())),
            _ => Err(Attempt::Fatal(BusError::broker(op(), err))),
        }
    }

    /// Publishes once and waits for the JetStream ack. A reconnect while waiting ends the wait
    /// early with `TimedOut`: the publish may have been lost with the old connection, so the caller
    /// publishes again at once rather than after the full request timeout.
    async fn publish(&self, subject: &str, message: &Outgoing) -> Result<PublishAck, PublishError> {
        let mut reconnects = self.reconnects.clone();
        reconnects.borrow_and_update();
        let mut publish = PublishMessage::build().payload(message.payload.clone());
        if let Some(id) = &message.dedup_id {
            publish = publish.message_id(id);
        }
        let ack = self
            .topology
            .js()
            .send_publish(subject.to_owned(), publish)
            .await?;
        tokio::select! {
            ack = ack.into_future() => ack,
            Ok(()) = reconnects.changed() => Err(PublishError::new(PublishErrorKind::TimedOut)),
        }
    }
}

#[async_trait]
impl Backend for NatsBackend {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: self.topology.options().storage == jetstream::stream::StorageType::File,
            ..Capabilities::ALL
        }
    }

    async fn send(&self, topic: &str, message: Outgoing) -> Result<(), BusError> {
        self.check_open()?;
        let subject = self.topology.subject(topic);
        let deadline = Instant::now() + self.topology.options().publish_timeout;
        loop {
            let failure = match self.attempt(topic, &subject, &message).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(failure)) => failure,
            };
            if Instant::now() >= deadline {
                return Err(BusError::broker(
                    format!("publish to topic {topic:?} (subject {subject})"),
                    format!(
                        "{failure} (still failing after publish_timeout={:?}); is nats-server up?",
                        self.topology.options().publish_timeout
                    ),
                ));
            }
            tracing::debug!(topic, error = %failure, "publish failed; trying again");
            tokio::time::sleep(PUBLISH_RETRY_PAUSE).await;
        }
    }

    async fn consumer(
        &self,
        topic: &str,
        options: &ConsumerOptions,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.check_open()?;
        self.topology.ensure_consumer(topic, &options.group).await?;
        let consumer = NatsConsumer::open(
            self.client.clone(),
            Arc::clone(&self.topology),
            topic,
            options,
            self.reconnects.clone(),
        )
        .await?;
        Ok(Box::new(consumer))
    }

    async fn close(&self) -> Result<(), BusError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let servers = self.topology.options().servers_display();
        self.client
            .flush()
            .await
            .map_err(|e| BusError::broker(format!("flush to {servers}"), e))?;
        self.client
            .drain()
            .await
            .map_err(|e| BusError::broker(format!("close the connection to {servers}"), e))
    }
}
