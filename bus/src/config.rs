//! Bus configuration: one URL, such as `file://./data`, `mem:`, `nats://127.0.0.1:4222?ack_wait=30s`.
//!
//! Options common to every backend, as query parameters:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `max_deliveries` | `10` | a message handed out more often than this goes to the dead-letter topic |
//! | `dead_letter` | `deadletter` | the dead-letter topic |
//!
//! Each backend documents its own options. An option no one asked for is an error naming it.

use std::str::FromStr;
use std::time::Duration;

use crate::error::{check_name, redact};
use crate::BusError;

/// The URL schemes this crate knows, for error messages.
pub const SCHEMES: &str = "mem:, file://DIR, stdio:, nats://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST, kafka://HOST:PORT";

/// A parsed bus URL whose query options are taken one by one by the code that understands them.
#[derive(Debug, Clone)]
pub struct BusUrl {
    original: String,
    scheme: String,
    /// Everything between `scheme:` and `?`.
    body: String,
    params: Vec<(String, String)>,
    asked: Vec<&'static str>,
}

impl BusUrl {
    /// Splits `url` into scheme, body and query options.
    pub fn parse(url: &str) -> Result<BusUrl, BusError> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once(':') else {
            return Err(BusError::url(
                url,
                format!("it has no scheme; write one of {SCHEMES}"),
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let params = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(BusUrl {
            original: url.to_owned(),
            scheme,
            body: body.to_owned(),
            params,
            asked: Vec::new(),
        })
    }

    /// The scheme, lower-cased (`file`, `nats` …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// What comes between `scheme:` and `?` (for `file://./data`: `//./data`).
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The URL as given, with any password removed.
    pub fn redacted(&self) -> String {
        redact(&self.original)
    }

    /// The URL as given, without its query: what a broker client connects to.
    pub fn without_query(&self) -> String {
        format!("{}:{}", self.scheme, self.body)
    }

    /// An error about this URL.
    pub fn error(&self, reason: impl Into<String>) -> BusError {
        BusError::url(&self.original, reason)
    }

    /// Takes the option `key`, if given.
    pub fn take(&mut self, key: &'static str) -> Option<String> {
        self.asked.push(key);
        let i = self.params.iter().position(|(k, _)| k == key)?;
        Some(self.params.remove(i).1)
    }

    /// Takes the option `key` and parses it as `T`.
    pub fn take_parsed<T>(&mut self, key: &'static str) -> Result<Option<T>, BusError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        v.parse::<T>()
            .map(Some)
            .map_err(|e| self.error(format!("option {key}={v:?} is not valid: {e}")))
    }

    /// Takes the option `key` as a duration such as `30s`, `5m`, `250ms`.
    pub fn take_duration(&mut self, key: &'static str) -> Result<Option<Duration>, BusError> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        humantime::parse_duration(&v).map(Some).map_err(|e| {
            self.error(format!(
                "option {key}={v:?} is not a duration ({e}); write it like 30s, 5m or 250ms"
            ))
        })
    }

    /// Takes the option `key` as a boolean (`true|false|1|0|yes|no`).
    pub fn take_bool(&mut self, key: &'static str) -> Result<Option<bool>, BusError> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(self.error(format!("option {key}={v:?} is not true or false"))),
        }
    }

    /// Takes every option whose key starts with `prefix` (pass-through settings such as Kafka's
    /// `rdkafka.<key>=<value>`), as (key without the prefix, value) pairs in URL order.
    pub fn take_prefixed(&mut self, prefix: &'static str) -> Vec<(String, String)> {
        self.asked.push(prefix);
        let (taken, kept) = std::mem::take(&mut self.params)
            .into_iter()
            .partition::<Vec<_>, _>(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len());
        self.params = kept;
        taken
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
            .collect()
    }

    /// Fails when an option was given that no one took, naming it and the nearest known option.
    pub fn finish(&self) -> Result<(), BusError> {
        let Some((key, _)) = self.params.first() else {
            return Ok(());
        };
        let mut known: Vec<&str> = self.asked.clone();
        known.sort_unstable();
        known.dedup();
        let hint = match known.iter().min_by_key(|k| edit_distance(k, key)) {
            Some(near) if edit_distance(near, key) <= 3 => format!("; did you mean {near}?"),
            _ => String::new(),
        };
        Err(self.error(format!(
            "unknown option {key:?}{hint} (options for {}: {})",
            self.scheme,
            known.join(", ")
        )))
    }
}

/// Options every backend shares, taken from the URL by [`BusOptions::from_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusOptions {
    /// A message handed out more often than this goes to the dead-letter topic.
    pub max_deliveries: u32,
    /// The dead-letter topic.
    pub dead_letter: String,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            max_deliveries: 10,
            dead_letter: "deadletter".to_owned(),
        }
    }
}

impl BusOptions {
    /// Takes `max_deliveries` and `dead_letter` from `url`.
    pub fn from_url(url: &mut BusUrl) -> Result<BusOptions, BusError> {
        let mut options = BusOptions::default();
        if let Some(n) = url.take_parsed::<u32>("max_deliveries")? {
            if n == 0 {
                return Err(url
                    .error("option max_deliveries=0 would dead-letter everything; use 1 or more"));
            }
            options.max_deliveries = n;
        }
        if let Some(topic) = url.take("dead_letter") {
            check_name("topic", &topic)?;
            options.dead_letter = topic;
        }
        Ok(options)
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_option_names_it_and_suggests() {
        let mut u = BusUrl::parse("nats://127.0.0.1:4222?ackwait=30s").unwrap();
        let _ = u.take_duration("ack_wait").unwrap();
        let err = u.finish().unwrap_err().to_string();
        assert!(err.contains("\"ackwait\""), "{err}");
        assert!(err.contains("did you mean ack_wait"), "{err}");
    }

    #[test]
    fn common_options() {
        let mut u = BusUrl::parse("mem:x?max_deliveries=3&dead_letter=dl").unwrap();
        let o = BusOptions::from_url(&mut u).unwrap();
        assert_eq!(o.max_deliveries, 3);
        assert_eq!(o.dead_letter, "dl");
        u.finish().unwrap();
        assert!(BusUrl::parse("nothing").is_err());
    }

    #[test]
    fn bad_duration_says_how_to_write_it() {
        let mut u = BusUrl::parse("nats://h?ack_wait=soon").unwrap();
        let err = u.take_duration("ack_wait").unwrap_err().to_string();
        assert!(err.contains("30s"), "{err}");
    }
}
