//! The options of a `nats://` URL (documented in the module docs of `nats`).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use async_nats::ServerAddr;

use crate::config::BusUrl;
use crate::BusError;

/// How to sign in.
#[derive(Debug, Clone, Default)]
pub(super) struct Auth {
    pub(super) user: Option<Login>,
    pub(super) token: Option<String>,
    pub(super) creds: Option<PathBuf>,
    pub(super) nkey: Option<String>,
}

/// Everything a `nats://` URL says.
#[derive(Debug, Clone)]
pub(super) struct NatsOptions {
    /// `host:port` of each server, for messages.
    pub(super) hosts: Vec<String>,
    pub(super) servers: Vec<ServerAddr>,
    pub(super) auth: Auth,
    pub(super) tls: bool,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) name: String,
    pub(super) stream_prefix: String,
    pub(super) subject_prefix: String,
    pub(super) ack_wait: Duration,
    pub(super) max_ack_pending: i64,
    pub(super) confirm_acks: bool,
    pub(super) storage: StorageType,
    pub(super) replicas: usize,
    pub(super) max_age: Duration,
    pub(super) duplicate_window: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) publish_timeout: Duration,
}

impl NatsOptions {
    /// Reads the servers, credentials and options of `url`, taking every option it knows.
    pub(super) fn from_url(url: &mut BusUrl) -> Result<NatsOptions, BusError> {
        let (user, hosts) = split_body(url)?;
        let servers = hosts
            .iter()
            .map(|h| {
                format!("nats://{h}")
                    .parse::<ServerAddr>()
                    .map_err(|e| url.error(format!("server {h:?} is not HOST:PORT ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth = Auth {
            user,
            token: url.take("token"),
            creds: url.take("creds").map(PathBuf::from),
            nkey: url.take("nkey"),
        };
        let options = NatsOptions {
            hosts,
            servers,
            auth,
            tls: url.take_bool("tls")?.unwrap_or(false),
            tls_ca: url.take("tls_ca").map(PathBuf::from),
            name: url.take("name").unwrap_or_else(|| "taskbus".to_owned()),
            stream_prefix: stream_prefix(url)?,
            subject_prefix: subject_prefix(url)?,
            ack_wait: positive(url, "ack_wait", Duration::from_secs(30))?,
            max_ack_pending: max_ack_pending(url)?,
            confirm_acks: url.take_bool("confirm_acks")?.unwrap_or(false),
            storage: storage(url)?,
            replicas: replicas(url)?,
            max_age: url.take_duration("max_age")?.unwrap_or(Duration::ZERO),
            duplicate_window: positive(url, "duplicate_window", Duration::from_secs(120))?,
            connect_timeout: positive(url, "connect_timeout", Duration::from_secs(5))?,
            request_timeout: positive(url, "request_timeout", Duration::from_secs(5))?,
            publish_timeout: positive(url, "publish_timeout", Duration::from_secs(30))?,
        };
        Ok(options)
    }

    /// `nats://host:port,host:port` (no credentials, no options): how errors name the servers.
    pub(super) fn servers_display(&self) -> String {
        format!("nats://{}", self.hosts.join(","))
    }
}

/// A user and password.
type Login = (String, String);

/// Splits `//[user:pass@]host[:port][,host[:port]…]` into the credentials and the servers.
fn split_body(url: &BusUrl) -> Result<(Option<Login>, Vec<String>), BusError> {
    let Some(rest) = url.body().strip_prefix("//") else {
        return Err(url.error("write it as nats://HOST:PORT[,HOST:PORT…]"));
    };
    let rest = rest.trim_end_matches('/');
    let (user, servers) = match rest.rsplit_once('@') {
        Some((userinfo, servers)) => {
            let (name, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (Some((percent_decode(name), percent_decode(pass))), servers)
        }
        None => (None, rest),
    };
    let mut hosts = Vec::new();
    for server in servers.split(',') {
        let server = server.trim();
        if server.is_empty() {
            return Err(url.error(
                "it names no server; write nats://HOST:PORT (several: nats://H1:4222,H2:4222)",
            ));
        }
        if server.contains('/') {
            return Err(url.error(format!(
                "server {server:?} has a path; a NATS URL has none: nats://HOST:PORT"
            )));
        }
        let has_port = server
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'));
        hosts.push(if has_port {
            server.to_owned()
        } else {
            format!("{server}:4222")
        });
    }
    Ok((user, hosts))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make a value below 256.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn positive(url: &mut BusUrl, key: &'static str, default: Duration) -> Result<Duration, BusError> {
    match url.take_duration(key)? {
        None => Ok(default),
        Some(d) if d.is_zero() => Err(url.error(format!(
            "option {key}=0 is not allowed; give a duration such as 30s"
        ))),
        Some(d) => Ok(d),
    }
}

fn stream_prefix(url: &mut BusUrl) -> Result<String, BusError> {
    let prefix = url
        .take("stream_prefix")
        .unwrap_or_else(|| "taskbus-".to_owned());
    match prefix.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))) {
        Some(c) => Err(url.error(format!(
            "option stream_prefix={prefix:?} contains {c:?}; stream names take only letters, digits, '_' and '-'"
        ))),
        None => Ok(prefix),
    }
}

fn subject_prefix(url: &mut BusUrl) -> Result<String, BusError> {
    let prefix = url
        .take("subject_prefix")
        .unwrap_or_else(|| "taskbus".to_owned());
    let bad_token = prefix
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">");
    let bad_char = prefix
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '*' | '>'));
    if !prefix.is_empty() && (bad_token || bad_char) {
        return Err(url.error(format!(
            "option subject_prefix={prefix:?} is not a subject prefix: use dot-separated tokens \
             without spaces, '*' or '>' (such as taskbus or acme.tasks), or leave it empty"
        )));
    }
    Ok(prefix)
}

fn max_ack_pending(url: &mut BusUrl) -> Result<i64, BusError> {
    match url.take_parsed::<i64>("max_ack_pending")? {
        None => Ok(10_000),
        Some(n) if n == -1 || n > 0 => Ok(n),
        Some(n) => Err(url.error(format!(
            "option max_ack_pending={n} is not allowed; give a positive number, or -1 for no limit"
        ))),
    }
}

fn storage(url: &mut BusUrl) -> Result<StorageType, BusError> {
    match url.take("storage").as_deref() {
        None | Some("file") => Ok(StorageType::File),
        Some("memory") => Ok(StorageType::Memory),
        Some(other) => Err(url.error(format!("option storage={other:?} is not file or memory"))),
    }
}

fn replicas(url: &mut BusUrl) -> Result<usize, BusError> {
    match url.take_parsed::<usize>("replicas")? {
        None => Ok(1),
        Some(n @ 1..=5) => Ok(n),
        Some(n) => Err(url.error(format!("option replicas={n} is not between 1 and 5"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<NatsOptions, BusError> {
        let mut u = BusUrl::parse(url)?;
        let o = NatsOptions::from_url(&mut u)?;
        u.finish()?;
        Ok(o)
    }

    #[test]
    fn defaults() {
        let o = parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(o.hosts, ["127.0.0.1:4222"]);
        assert_eq!(o.ack_wait, Duration::from_secs(30));
        assert_eq!(o.stream_prefix, "taskbus-");
        assert_eq!(o.subject_prefix, "taskbus");
        assert_eq!(o.storage, StorageType::File);
        assert!(o.auth.user.is_none());
    }

    #[test]
    fn several_servers_credentials_and_options() {
        let o = parse(
            "nats://al%40ice:p%3Ass@n1,n2:4223?ack_wait=5m&storage=memory&replicas=3&subject_prefix=&max_age=7d",
        )
        .unwrap();
        assert_eq!(o.hosts, ["n1:4222", "n2:4223"]);
        assert_eq!(o.auth.user, Some(("al@ice".to_owned(), "p:ss".to_owned())));
        assert_eq!(o.ack_wait, Duration::from_secs(300));
        assert_eq!(o.storage, StorageType::Memory);
        assert_eq!(o.replicas, 3);
        assert_eq!(o.subject_prefix, "");
        assert_eq!(o.max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(o.servers_display(), "nats://n1:4222,n2:4223");
    }

    #[test]
    fn bad_options_name_the_fix() {
        let e = parse("nats://h?storage=disk").unwrap_err().to_string();
        assert!(e.contains("file or memory"), "{e}");
        let e = parse("nats://h?replicas=7").unwrap_err().to_string();
        assert!(e.contains("between 1 and 5"), "{e}");
        let e = parse("nats://h?stream_prefix=a.b").unwrap_err().to_string();
        assert!(e.contains("'.'"), "{e}");
        let e = parse("nats://h?subject_prefix=a..b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dot-separated"), "{e}");
        let e = parse("nats://h?ack_wait=0s").unwrap_err().to_string();
        assert!(e.contains("ack_wait=0"), "{e}");
        let e = parse("nats://h?ackwait=1s").unwrap_err().to_string();
        assert!(e.contains("did you mean ack_wait"), "{e}");
        let e = parse("nats://a,,b").unwrap_err().to_string();
        assert!(e.contains("names no server"), "{e}");
        let e = parse("nats:h").unwrap_err().to_string();
        assert!(e.contains("nats://HOST:PORT"), "{e}");
    }
}
