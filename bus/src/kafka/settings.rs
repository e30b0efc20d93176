//! The `kafka://` URL: brokers, options, and the librdkafka configuration they become.
//! The options are documented on the backend module (`enabled.rs`).

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::BusUrl;
use crate::BusError;

/// Everything the `kafka://` URL configures.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `HOST:PORT,HOST:PORT`, for `bootstrap.servers`.
    pub(super) brokers: String,
    /// SASL user and password from the URL's user info.
    credentials: Option<(String, String)>,
    /// Partitions of topics this backend creates.
    pub(super) partitions: i32,
    /// Replication factor of topics this backend creates (`-1`: the broker's default).
    pub(super) replication: i32,
    /// Consumer group session timeout: how long a crashed member keeps its partitions.
    pub(super) session_timeout: Duration,
    /// How long a rebalance waits for in-flight deliveries of partitions taken away.
    pub(super) rebalance_wait: Duration,
    /// How long opening a consumer waits for its first partition assignment.
    pub(super) join_wait: Duration,
    /// How often stored offsets are committed.
    pub(super) commit_interval: Duration,
    /// Producer batching delay.
    linger: Duration,
    /// How long a send may take before it fails.
    pub(super) send_timeout: Duration,
    /// How long connecting waits for the brokers to answer.
    pub(super) connect_timeout: Duration,
    /// Producer compression codec.
    compression: String,
    /// `client.id`.
    client_id: String,
    /// Kafka group id `GROUP.TOPIC` rather than `GROUP`.
    pub(super) group_per_topic: bool,
    /// `rdkafka.<key>=<value>` options, passed to librdkafka as they are (last, so they win).
    passthrough: Vec<(String, String)>,
}

const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];

impl Settings {
    /// Takes the brokers and every Kafka option from `url`.
    pub(super) fn from_url(url: &mut BusUrl) -> Result<Settings, BusError> {
        let (credentials, brokers) = brokers(url)?;
        let session_timeout = url
            .take_duration("session_timeout")?
            .unwrap_or(Duration::from_secs(10));
        if session_timeout < Duration::from_secs(1) {
            return Err(url.error(format!(
                "option session_timeout={session_timeout:?} is too short; use 1s or more (Kafka \
                 brokers usually require 6s or more)"
            )));
        }
        let partitions = url.take_parsed::<i32>("partitions")?.unwrap_or(3);
        if partitions < 1 {
            return Err(url.error("option partitions must be 1 or more"));
        }
        let replication = url.take_parsed::<i32>("replication")?.unwrap_or(-1);
        if replication == 0 || replication < -1 {
            return Err(
                url.error("option replication must be 1 or more, or -1 for the broker's default")
            );
        }
        let compression = url.take("compression").unwrap_or_else(|| "none".to_owned());
        if !COMPRESSIONS.contains(&compression.as_str()) {
            return Err(url.error(format!(
                "option compression={compression:?} is not known; use one of {}",
                COMPRESSIONS.join(", ")
            )));
        }
        Ok(Settings {
            brokers,
            credentials,
            partitions,
            replication,
            rebalance_wait: url
                .take_duration("rebalance_wait")?
                .unwrap_or(Duration::from_secs(30)),
            join_wait: url.take_duration("join_wait")?.unwrap_or(session_timeout),
            session_timeout,
            commit_interval: url
                .take_duration("commit_interval")?
                .unwrap_or(Duration::from_secs(1)),
            linger: url.take_duration("linger")?.unwrap_or(Duration::ZERO),
            send_timeout: url
                .take_duration("send_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            connect_timeout: url
                .take_duration("connect_timeout")?
                .unwrap_or(Duration::from_secs(10)),
            compression,
            client_id: url
                .take("client_id")
                .unwrap_or_else(|| "taskbus".to_owned()),
            group_per_topic: url.take_bool("group_per_topic")?.unwrap_or(true),
            passthrough: url.take_prefixed("rdkafka."),
        })
    }

    /// Settings every client shares: brokers, identity, security, pass-through options are added
    /// by [`finish`](Self::finish).
    fn common(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        if let Some((user, password)) = &self.credentials {
            c.set("security.protocol", "sasl_plaintext")
                .set("sasl.mechanism", "PLAIN")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        c
    }

    fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.passthrough {
            c.set(k, v);
        }
        c
    }

    /// The idempotent producer: acks from all in-sync replicas, retries without duplicates.
    pub(super) fn producer(&self) -> ClientConfig {
        let mut c = self.common();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", millis(self.linger))
            .set("message.timeout.ms", millis(self.send_timeout))
            .set("compression.codec", &self.compression)
            // librdkafka refuses messages over 1,000,000 bytes itself, below the brokers' own
            // limits (Kafka's default `message.max.bytes` is 1 MiB + 12): let the broker decide.
            .set("message.max.bytes", "8388608");
        self.finish(c)
    }

    /// A consumer in `group`: offsets stored by the backend (only up to the lowest unfinished
    /// message) and committed every `commit_interval`; a new group starts at the earliest message.
    pub(super) fn consumer(&self, group: &str, finite: bool) -> ClientConfig {
        let mut c = self.common();
        let session = self.session_timeout;
        let heartbeat = (session / 3).min(Duration::from_secs(3));
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", millis(self.commit_interval))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", millis(session))
            .set("heartbeat.interval.ms", millis(heartbeat))
            // A rebalance waits inside `poll` (rebalance_wait, renewed by in_progress): librdkafka
            // leaves the group if that outlasts this.
            .set("max.poll.interval.ms", millis(self.max_poll_interval()))
            .set(
                "enable.partition.eof",
                if finite { "true" } else { "false" },
            )
            // Prefetch less than librdkafka's 64 MiB per partition: the backend pauses partitions
            // when the consumer has enough in flight, and a pause drops what was prefetched.
            .set("queued.max.messages.kbytes", "8192");
        self.finish(c)
    }

    /// How long librdkafka lets its poll thread stay inside one `poll` (a rebalance waiting for
    /// deliveries) before it leaves the group.
    pub(super) fn max_poll_interval(&self) -> Duration {
        (self.rebalance_wait * 2).max(Duration::from_secs(300))
    }

    /// The longest a rebalance waits for deliveries, even when `in_progress` keeps renewing their
    /// leases: well within `max_poll_interval`.
    pub(super) fn rebalance_cap(&self) -> Duration {
        self.max_poll_interval() * 4 / 5
    }

    /// The admin client that creates topics.
    pub(super) fn admin(&self) -> ClientConfig {
        self.finish(self.common())
    }
}

/// Splits `//[USER:PASS@]HOST:PORT,HOST:PORT[/]` into credentials and the broker list.
fn brokers(url: &BusUrl) -> Result<(Option<(String, String)>, String), BusError> {
    let body = url.body();
    let Some(rest) = body.strip_prefix("//") else {
        return Err(url.error("write it as kafka://HOST:PORT[,HOST:PORT…]"));
    };
    let rest = rest.trim_end_matches('/');
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((info, hosts)) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            let decode = |s: &str| {
                percent_decode(s)
                    .ok_or_else(|| url.error("the user or password is not valid percent-encoding"))
            };
            (Some((decode(user)?, decode(password)?)), hosts)
        }
        None => (None, rest),
    };
    let mut list = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            return Err(url.error("it names no broker; write it as kafka://HOST:PORT[,HOST:PORT…]"));
        }
        if host.contains('/') {
            return Err(url.error(format!(
                "{host:?} is not HOST:PORT; a kafka:// URL has no path"
            )));
        }
        match host.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_err() => {
                return Err(url.error(format!("{host:?} has no valid port")));
            }
            Some(_) => list.push(host.to_owned()),
            None => list.push(format!("{host}:9092")),
        }
    }
    Ok((credentials, list.join(",")))
}

/// Decodes `%XX` escapes (user info may hold `@`, `:` or `,` that way).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings, BusError> {
        let mut u = BusUrl::parse(url)?;
        let s = Settings::from_url(&mut u)?;
        u.finish()?;
        Ok(s)
    }

    #[test]
    fn defaults() {
        let s = parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(s.brokers, "127.0.0.1:9092");
        assert_eq!(s.partitions, 3);
        assert_eq!(s.replication, -1);
        assert_eq!(s.session_timeout, Duration::from_secs(10));
        assert_eq!(s.rebalance_wait, Duration::from_secs(30));
        assert_eq!(s.join_wait, s.session_timeout);
        let p = s.producer();
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("linger.ms"), Some("0"));
        let c = s.consumer("workers", false);
        assert_eq!(c.get("group.id"), Some("workers"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn several_brokers_default_port_and_options() {
        let s = parse(
            "kafka://a:1,b,c:3/?partitions=6&replication=3&session_timeout=45s&linger=20ms\
             &compression=lz4&client_id=me&rebalance_wait=2s&rdkafka.fetch.wait.max.ms=50",
        )
        .unwrap();
        assert_eq!(s.brokers, "a:1,b:9092,c:3");
        assert_eq!((s.partitions, s.replication), (6, 3));
        assert_eq!(s.rebalance_wait, Duration::from_secs(2));
        let p = s.producer();
        assert_eq!(p.get("compression.codec"), Some("lz4"));
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("client.id"), Some("me"));
        let c = s.consumer("g", true);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(c.get("enable.partition.eof"), Some("true"));
    }

    #[test]
    fn passthrough_wins_over_our_defaults() {
        let s = parse("kafka://h:1?rdkafka.acks=1&rdkafka.security.protocol=ssl").unwrap();
        let p = s.producer();
        assert_eq!(p.get("acks"), Some("1"));
        assert_eq!(p.get("security.protocol"), Some("ssl"));
    }

    #[test]
    fn credentials_become_sasl_plain() {
        let s = parse("kafka://alice:s%40cret@h:9092").unwrap();
        let c = s.admin();
        assert_eq!(c.get("sasl.username"), Some("alice"));
        assert_eq!(c.get("sasl.password"), Some("s@cret"));
        assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
    }

    #[test]
    fn passwords_never_show_in_errors() {
        for url in [
            "kafka://alice:s3cret@h:9092",
            "kafka://alice:s3cret@h1:9092,h2:9092",
        ] {
            let u = BusUrl::parse(url).unwrap();
            assert!(!u.redacted().contains("s3cret"), "{}", u.redacted());
            let err = u.error("x").to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |u: &str| parse(u).unwrap_err().to_string();
        assert!(err("kafka:h:1").contains("kafka://HOST:PORT"));
        assert!(err("kafka://").contains("names no broker"));
        assert!(err("kafka://h:x").contains("no valid port"));
        assert!(err("kafka://h:1,").contains("names no broker"));
        assert!(err("kafka://h:1?compression=brotli").contains("lz4"));
        assert!(err("kafka://h:1?partitions=0").contains("partitions"));
        assert!(err("kafka://h:1?replication=0").contains("replication"));
        assert!(err("kafka://h:1?session_timeout=10ms").contains("session_timeout"));
        let unknown = err("kafka://h:1?partition=2");
        assert!(unknown.contains("did you mean partitions"), "{unknown}");
    }
}
