//! One AMQP connection that comes back: [`Link::connection`] hands out the live connection, and
//! reconnects (once, for every caller waiting) when it was lost.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::options::AmqpOptions;
use crate::BusError;

/// The first wait between reconnection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A connection to RabbitMQ for one role (publishing or consuming), reopened when lost.
pub(crate) struct Link {
    options: Arc<AmqpOptions>,
    role: &'static str,
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while reconnecting, so one caller reconnects and the others wait for it.
    reconnecting: tokio::sync::Mutex<()>,
    closed: CancellationToken,
}

impl Link {
    /// Connects, failing at once (with what to do) when RabbitMQ cannot be reached or refuses us.
    pub(crate) async fn open(
        options: Arc<AmqpOptions>,
        role: &'static str,
    ) -> Result<Link, BusError> {
        let connection = connect_once(&options, role).await?;
        Ok(Link {
            options,
            role,
            current: Mutex::new(Some(Arc::new(connection))),
            reconnecting: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
        })
    }

    pub(crate) fn options(&self) -> &Arc<AmqpOptions> {
        &self.options
    }

    /// The live connection, reconnecting with backoff for up to `reconnect_timeout` when it was lost.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, BusError> {
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        let _only_one = self.reconnecting.lock().await;
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        let deadline = Instant::now() + self.options.reconnect_timeout;
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.check_open()?;
            match connect_once(&self.options, self.role).await {
                Ok(connection) => {
                    tracing::info!(url = %self.options.url, role = self.role, "reconnected to RabbitMQ");
                    let connection = Arc::new(connection);
                    *self.lock() = Some(connection.clone());
                    return Ok(connection);
                }
                Err(e) if Instant::now() + backoff >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(role = self.role, error = %e, retry_in = ?backoff,
                        "RabbitMQ connection lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.closed.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Fails once [`Link::close`] was called.
    pub(crate) fn check_open(&self) -> Result<(), BusError> {
        if self.closed.is_cancelled() {
            return Err(BusError::Closed(format!(
                "the AMQP bus {}",
                self.options.url
            )));
        }
        Ok(())
    }

    /// Whether [`Link::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the connection; the broker requeues every delivery not yet acked.
    pub(crate) async fn close(&self) {
        self.closed.cancel();
        let connection = self.lock().take();
        if let Some(connection) = connection {
            if connection.status().connected() {
                if let Err(e) = connection.close(200, "taskbus bus closed").await {
                    tracing::debug!(role = self.role, error = %e, "closing the RabbitMQ connection");
                }
            }
        }
    }

    fn live(&self) -> Option<Arc<Connection>> {
        self.lock()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Connection>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn connect_once(options: &AmqpOptions, role: &str) -> Result<Connection, BusError> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(format!("taskbus {role}").into());
    let attempt = Connection::connect_uri(options.uri.clone(), properties);
    match tokio::time::timeout(options.connect_timeout + Duration::from_secs(1), attempt).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(connect_error(options, &e)),
        Err(_) => Err(BusError::Connect {
            url: options.url.clone(),
            reason: format!("no answer within {:?}", options.connect_timeout),
            hint:
                "is RabbitMQ running and reachable there? raise connect_timeout= for a slow network"
                    .to_owned(),
        }),
    }
}

/// A connection error that says what RabbitMQ refused and what to do about it.
pub(crate) fn connect_error(options: &AmqpOptions, e: &lapin::Error) -> BusError {
    let (user, vhost) = (options.user(), options.vhost());
    let hint = match reply_code(e) {
        Some(403) => format!(
            "RabbitMQ refused user {user:?} (wrong user name or password, or the guest user \
             connecting from another host): check the URL, or create the user with \
             `rabbitmqctl add_user {user} PASSWORD` and `rabbitmqctl set_permissions -p {vhost} {user} \
             \".*\" \".*\" \".*\"`"
        ),
        Some(530) => format!(
            "RabbitMQ refused vhost {vhost:?} to user {user:?}: it does not exist or the user has no \
             permission on it; create it with `rabbitmqctl add_vhost {vhost}` and grant it with \
             `rabbitmqctl set_permissions -p {vhost} {user} \".*\" \".*\" \".*\"` (the default vhost \
             / is written %2f in the URL)"
        ),
        _ => match e {
            lapin::Error::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "is RabbitMQ running? start it with `rabbitmq-server -detached` (or \
                 scripts/brokers/amqp.sh), or fix the host and port in the URL"
                    .to_owned()
            }
            _ => "is RabbitMQ running there, and is this an AMQP 0.9.1 port? check the URL".to_owned(),
        },
    };
    BusError::Connect {
        url: options.url.clone(),
        reason: e.to_string(),
        hint,
    }
}

/// The AMQP reply code of a protocol error (404 not found, 406 precondition failed, 403, 530 …).
pub(crate) fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e {
        lapin::Error::ProtocolError(amqp) => Some(amqp.kind().get_id()),
        _ => None,
    }
}

/// An operation that failed, and whether trying again (on a new channel or connection) may work.
pub(crate) struct Failure {
    pub(crate) error: BusError,
    pub(crate) retry: bool,
}

impl Failure {
    /// A client or broker error during `op`: retried unless RabbitMQ refused the operation itself
    /// (access refused, precondition failed, message too large, not allowed, a protocol bug).
    pub(crate) fn lapin(op: impl Into<String>, e: &lapin::Error) -> Failure {
        let refused = matches!(reply_code(e), Some(311 | 403 | 406 | 501..=503 | 530 | 540));
        Failure {
            error: BusError::broker(op, e),
            retry: !refused,
        }
    }

    /// An error that retrying will not fix (or that already retried).
    pub(crate) fn fatal(error: BusError) -> Failure {
        Failure {
            error,
            retry: false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, `reconnect_timeout` has passed or the link closed,
/// waiting with backoff between tries.
pub(crate) async fn with_retries<T, F, Fut>(
    link: &Link,
    what: &str,
    mut attempt: F,
) -> Result<T, BusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let deadline = Instant::now() + link.options.reconnect_timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(f) if !f.retry || link.is_closed() || Instant::now() + backoff >= deadline => {
                return Err(f.error)
            }
            Err(f) => {
                tracing::warn!(op = what, error = %f.error, retry_in = ?backoff, "RabbitMQ operation failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = link.closed.cancelled() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
