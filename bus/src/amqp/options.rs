//! The options of an `amqp://` URL (documented in the module docs).

use std::time::Duration;

use lapin::uri::AMQPUri;

use crate::config::BusUrl;
use crate::BusError;

/// The largest AMQP frame this bus asks for. lapin keeps a send and a receive buffer of 32 frames
/// per connection, so RabbitMQ's own default (128 KiB) costs 8 MiB per connection; tasks are small,
/// and a larger one simply travels in several frames.
pub(crate) const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// The type of the queues declared for consumer groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Everything the AMQP backend takes from its URL.
#[derive(Debug, Clone)]
pub(crate) struct AmqpOptions {
    /// Where to connect, with the heartbeat and timeout set.
    pub(crate) uri: AMQPUri,
    /// The URL without its query, password removed: for messages.
    pub(crate) url: String,
    pub(crate) exchange: String,
    pub(crate) queue_type: QueueType,
    pub(crate) durable: bool,
    pub(crate) prefetch: Option<u16>,
    pub(crate) queue_expires: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_timeout: Duration,
}

impl AmqpOptions {
    /// Takes the AMQP options from `url` and parses where to connect.
    pub(crate) fn from_url(url: &mut BusUrl) -> Result<AmqpOptions, BusError> {
        let exchange = url.take("exchange").unwrap_or_else(|| "taskbus".to_owned());
        check_exchange(url, &exchange)?;
        let queue_type = match url.take("queue_type").as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(url.error(format!(
                    "option queue_type={other:?} is not valid; use classic or quorum"
                )))
            }
        };
        let durable = url.take_bool("durable")?.unwrap_or(true);
        if queue_type == QueueType::Quorum && !durable {
            return Err(url.error(
                "quorum queues are always durable; drop durable=false or use queue_type=classic",
            ));
        }
        let prefetch =
            match url.take_parsed::<u16>("prefetch")? {
                Some(0) => return Err(url.error(
                    "option prefetch=0 would let RabbitMQ push unlimited messages; use 1 to 65535",
                )),
                other => other,
            };
        let queue_expires = url.take_duration("queue_expires")?;
        if queue_expires.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(url.error(
                "option queue_expires is shorter than a second; RabbitMQ would delete queues at once",
            ));
        }
        let heartbeat = url.take_duration("heartbeat")?;
        let frame_max = url
            .take_parsed::<u32>("frame_max")?
            .unwrap_or(DEFAULT_FRAME_MAX);
        if frame_max < 4096 {
            return Err(url.error(format!(
                "option frame_max={frame_max} is below AMQP's smallest frame, 4096 bytes; use 4096 or more, such as {DEFAULT_FRAME_MAX}"
            )));
        }
        let connect_timeout = url
            .take_duration("connect_timeout")?
            .unwrap_or(Duration::from_secs(10));
        let reconnect_timeout = url
            .take_duration("reconnect_timeout")?
            .unwrap_or(Duration::from_secs(60));

        let mut uri: AMQPUri = url.without_query().parse().map_err(|e: String| {
            url.error(format!(
                "{e}; write it like amqp://USER:PASS@HOST:5672/VHOST (the default vhost / is %2f)"
            ))
        })?;
        if let Some(heartbeat) = heartbeat {
            let secs = u16::try_from(heartbeat.as_secs())
                .map_err(|_| url.error("option heartbeat is too long; use at most 65535s"))?;
            uri.query.heartbeat = Some(secs);
        }
        uri.query.frame_max = Some(frame_max);
        uri.query.connection_timeout = u64::try_from(connect_timeout.as_millis()).ok();
        Ok(AmqpOptions {
            uri,
            url: crate::error::redact(&url.without_query()),
            exchange,
            queue_type,
            durable,
            prefetch,
            queue_expires,
            connect_timeout,
            reconnect_timeout,
        })
    }

    /// The vhost, for messages.
    pub(crate) fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The user name, for messages.
    pub(crate) fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }
}

fn check_exchange(url: &BusUrl, name: &str) -> Result<(), BusError> {
    let reason = if name.is_empty() {
        Some("it is empty (the default exchange cannot route by topic)".to_owned())
    } else if name.len() > 100 {
        Some(format!("it is {} bytes long; the limit is 100", name.len()))
    } else if name.starts_with("amq.") {
        Some("names starting with amq. are reserved by RabbitMQ".to_owned())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("it contains {c:?}; use only letters, digits, '.', '_' and '-'"))
    };
    match reason {
        Some(reason) => Err(url.error(format!("option exchange={name:?} is not valid: {reason}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<AmqpOptions, BusError> {
        let mut u = BusUrl::parse(url)?;
        let o = AmqpOptions::from_url(&mut u)?;
        u.finish()?;
        Ok(o)
    }

    #[test]
    fn defaults() {
        let o = parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(o.exchange, "taskbus");
        assert_eq!(o.queue_type, QueueType::Classic);
        assert!(o.durable);
        assert_eq!(o.prefetch, None);
        assert_eq!(o.vhost(), "/");
        assert_eq!(o.user(), "guest");
        assert!(!o.url.contains("secret"), "{}", o.url);
        assert_eq!(o.reconnect_timeout, Duration::from_secs(60));
        assert_eq!(o.uri.query.frame_max, Some(DEFAULT_FRAME_MAX));
    }

    #[test]
    fn every_option() {
        let o = parse(
            "amqp://u:p@h:5673/jobs?exchange=ex.1&queue_type=quorum&durable=true&prefetch=32\
             &heartbeat=10s&connect_timeout=2s&reconnect_timeout=5m&queue_expires=1h&frame_max=131072",
        )
        .unwrap();
        assert_eq!(o.exchange, "ex.1");
        assert_eq!(o.queue_type, QueueType::Quorum);
        assert_eq!(o.prefetch, Some(32));
        assert_eq!(o.uri.query.heartbeat, Some(10));
        assert_eq!(o.uri.query.connection_timeout, Some(2000));
        assert_eq!(o.uri.authority.port, 5673);
        assert_eq!(o.vhost(), "jobs");
        assert_eq!(o.reconnect_timeout, Duration::from_secs(300));
        assert_eq!(o.queue_expires, Some(Duration::from_secs(3600)));
        assert_eq!(o.uri.query.frame_max, Some(131_072));
    }

    #[test]
    fn bad_options_say_what_to_write() {
        let err = |url: &str| parse(url).unwrap_err().to_string();
        assert!(err("amqp://h/%2f?queue_type=stream").contains("classic or quorum"));
        assert!(err("amqp://h/%2f?queue_type=quorum&durable=false").contains("always durable"));
        assert!(err("amqp://h/%2f?prefetch=0").contains("1 to 65535"));
        assert!(err("amqp://h/%2f?frame_max=1024").contains("4096 or more"));
        assert!(err("amqp://h/%2f?prefetch=70000").contains("prefetch"));
        assert!(err("amqp://h/%2f?exchange=amq.topic").contains("reserved"));
        assert!(err("amqp://h/%2f?exchange=a:b").contains("':'"));
        assert!(err("amqp://h/%2f?exchnage=x").contains("did you mean exchange"));
        assert!(err("amqp://h/%2f?queue_expires=10ms").contains("shorter than a second"));
    }
}
