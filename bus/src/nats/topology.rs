//! Topics and groups onto JetStream streams and durable consumers: names, and creating what is
//! missing.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream::{
    self, ConsumerErrorKind, ConsumerUpdateErrorKind, RetentionPolicy,
};
use async_nats::jetstream::{self, ErrorCode};
use tokio::sync::OnceCell;

use super::options::NatsOptions;
use crate::BusError;

/// A failed admin request, and whether trying again later may work (the server was unreachable or
/// slow) or not (the server said no).
#[derive(Debug)]
pub(super) struct AdminError {
    pub(super) error: BusError,
    pub(super) transient: bool,
}

impl From<AdminError> for BusError {
    fn from(e: AdminError) -> Self {
        e.error
    }
}

/// Names and creates the streams and consumers of one bus.
pub(super) struct Topology {
    js: jetstream::Context,
    options: NatsOptions,
    /// Streams known to exist, so only the first use of a topic asks the server (once, however
    /// many sends find it missing at the same time), and whether each holds other subjects than
    /// its topic's (a stream made by someone else).
    known: Mutex<HashMap<String, Arc<OnceCell<bool>>>>,
}

impl Topology {
    pub(super) fn new(js: jetstream::Context, options: NatsOptions) -> Self {
        Topology {
            js,
            options,
            known: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn options(&self) -> &NatsOptions {
        &self.options
    }

    pub(super) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// The stream that holds `topic`: `{stream_prefix}{topic}` with `.` made `_`.
    pub(super) fn stream(&self, topic: &str) -> String {
        format!("{}{}", self.options.stream_prefix, topic.replace('.', "_"))
    }

    /// The subject `topic` is published on.
    pub(super) fn subject(&self, topic: &str) -> String {
        if self.options.subject_prefix.is_empty() {
            topic.to_owned()
        } else {
            format!("{}.{topic}", self.options.subject_prefix)
        }
    }

    /// The durable consumer of `group`: the group's name with `.` made `_`.
    pub(super) fn consumer(group: &str) -> String {
        group.replace('.', "_")
    }

    /// Makes sure the stream of `topic` exists and holds its subject; returns whether it holds other
    /// subjects too.
    pub(super) async fn ensure_stream(&self, topic: &str) -> Result<bool, AdminError> {
        let name = self.stream(topic);
        let cell = Arc::clone(self.known().entry(name.clone()).or_default());
        cell.get_or_try_init(|| self.look_up_or_create(topic, &name))
            .await
            .copied()
    }

    async fn look_up_or_create(&self, topic: &str, name: &str) -> Result<bool, AdminError> {
        let subject = self.subject(topic);
        let info = match self.js.get_stream(name).await {
            Ok(mut s) => s
                .info()
                .await
                .map_err(|e| self.fail("read stream", name, e, true))?
                .clone(),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    self.create_stream(name, &subject).await?
                }
                GetStreamErrorKind::JetStream(_) => {
                    return Err(self.fail("look up stream", name, e, false))
                }
                _ => return Err(self.fail("look up stream", name, e, true)),
            },
        };
        if !info.config.subjects.iter().any(|s| s == &subject) {
            return Err(AdminError {
                error: BusError::InvalidName {
                    what: "topic",
                    name: topic.to_owned(),
                    reason: format!(
                        "its stream {name:?} exists but holds the subjects {:?}, not {subject:?} (topics \
                         that differ only in '.' and '_' share a stream name); rename the topic, or use \
                         another stream_prefix",
                        info.config.subjects
                    ),
                },
                transient: false,
            });
        }
        Ok(info.config.subjects.len() > 1)
    }

    async fn create_stream(&self, name: &str, subject: &str) -> Result<stream::Info, AdminError> {
        let o = &self.options;
        let config = stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            retention: RetentionPolicy::Limits,
            storage: o.storage,
            num_replicas: o.replicas,
            max_age: o.max_age,
            duplicate_window: o.duplicate_window,
            description: Some(format!("taskbus topic on subject {subject}")),
            ..Default::default()
        };
        let created = match self.js.create_stream(config).await {
            Ok(s) => s,
            Err(e) => match e.kind() {
                // Another process may have created it between our look-up and our create.
                CreateStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NAME_EXIST =>
                {
                    self.js
                        .get_stream(name)
                        .await
                        .map_err(|_| self.fail("create stream", name, e, true))?
                }
                CreateStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP =>
                {
                    return Err(self.fail(
                        "create stream",
                        name,
                        format!(
                            "{e}: another stream already holds the subject {subject:?} (made by a bus \
                             with another stream_prefix but the same subject_prefix?); use another \
                             subject_prefix, or delete that stream"
                        ),
                        false,
                    ))
                }
                CreateStreamErrorKind::JetStream(_) => {
                    return Err(self.fail("create stream", name, e, false))
                }
                _ => return Err(self.fail("create stream", name, e, true)),
            },
        };
        let mut created = created;
        Ok(created
            .info()
            .await
            .map_err(|e| self.fail("read stream", name, e, true))?
            .clone())
    }

    /// Makes sure the durable consumer of `group` on `topic` exists with this bus's ack wait,
    /// creating it (reading from the start of the stream) when missing.
    pub(super) async fn ensure_consumer(&self, topic: &str, group: &str) -> Result<(), AdminError> {
        let shared = self.ensure_stream(topic).await?;
        let stream_name = self.stream(topic);
        let name = Self::consumer(group);
        let description = format!("taskbus group {group} of topic {topic}");
        let wanted = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(description.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.options.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.options.max_ack_pending,
            // A stream of its own holds only the topic's subject: no filter to apply.
            filter_subject: if shared {
                self.subject(topic)
            } else {
                String::new()
            },
            ..Default::default()
        };
        let stream = self
            .js
            .get_stream_no_info(&stream_name)
            .await
            .map_err(|e| self.fail("look up stream", &stream_name, e, true))?;
        let info = match stream.consumer_info(&name).await {
            Ok(info) => info,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                return match stream.create_consumer(wanted).await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let transient = !matches!(e.kind(), ConsumerErrorKind::JetStream(_));
                        Err(self.fail("create consumer", &name, e, transient))
                    }
                };
            }
            Err(e) => {
                let transient = !matches!(e.kind(), ConsumerInfoErrorKind::JetStream(_));
                return Err(self.fail("look up consumer", &name, e, transient));
            }
        };
        let found = info.config.description.clone().unwrap_or_default();
        if found.starts_with("taskbus group ") && found != description {
            return Err(AdminError {
                error: BusError::InvalidName {
                    what: "group",
                    name: group.to_owned(),
                    reason: format!(
                        "its consumer {name:?} on stream {stream_name:?} already serves another group \
                         ({found}); groups that differ only in '.' and '_' share a consumer name: \
                         rename the group"
                    ),
                },
                transient: false,
            });
        }
        let c = &info.config;
        if c.ack_wait == wanted.ack_wait && c.max_ack_pending == wanted.max_ack_pending {
            return Ok(());
        }
        let update = consumer::Config {
            ack_wait: wanted.ack_wait,
            max_ack_pending: wanted.max_ack_pending,
            ..info.config
        };
        match self
            .js
            .update_consumer_on_stream(update, &stream_name)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let transient = !matches!(e.kind(), ConsumerUpdateErrorKind::JetStream(_));
                Err(self.fail("update consumer", &name, e, transient))
            }
        }
    }

    /// Forgets that `topic`'s stream exists (after the server said it does not).
    pub(super) fn forget(&self, topic: &str) {
        let name = self.stream(topic);
        self.known().remove(&name);
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceCell<bool>>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, op: &str, name: &str, e: impl Display, transient: bool) -> AdminError {
        AdminError {
            error: BusError::broker(
                format!("{op} {name:?} on {}", self.options.servers_display()),
                e,
            ),
            transient,
        }
    }
}
