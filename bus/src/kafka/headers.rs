//! The Kafka headers a nack writes on the copy it re-publishes.
//!
//! | header | value | meaning |
//! |---|---|---|
//! | `taskbus-group` | group name | only this consumer group handles the copy; other groups skip it |
//! | `taskbus-deliveries` | decimal count | how many times the message was delivered before this copy |
//! | `taskbus-not-before` | Unix time in ms | the consumer holds the copy back until then (nack delay) |
//!
//! Messages without these headers (everything a producer sends) are a first delivery for every group.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, Headers, OwnedHeaders};

const GROUP: &str = "taskbus-group";
const DELIVERIES: &str = "taskbus-deliveries";
const NOT_BEFORE: &str = "taskbus-not-before";

/// The redelivery facts a message carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Redelivery {
    /// The one group that should handle this copy (`None`: every group).
    pub(super) group: Option<String>,
    /// Deliveries before this copy.
    pub(super) deliveries: u32,
    /// Not to be handed out before this time, in ms since the Unix epoch.
    pub(super) not_before_ms: Option<i64>,
}

impl Redelivery {
    /// Reads the headers of a fetched message. Unknown headers are ignored; malformed values of
    /// ours count as absent (a first delivery, no delay), so a bad header never loses a message.
    pub(super) fn read(headers: Option<&impl Headers>) -> Redelivery {
        let mut r = Redelivery::default();
        let Some(headers) = headers else {
            return r;
        };
        for h in headers.iter() {
            let Some(value) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            match h.key {
                GROUP => r.group = Some(value.to_owned()),
                DELIVERIES => r.deliveries = value.parse().unwrap_or(0),
                NOT_BEFORE => r.not_before_ms = value.parse().ok(),
                _ => {}
            }
        }
        r
    }

    /// The headers for the copy that a nack by `group` re-publishes, after `deliveries` deliveries,
    /// to be handed out after `delay`.
    pub(super) fn nacked(group: &str, deliveries: u32, delay: Option<Duration>) -> OwnedHeaders {
        let deliveries = deliveries.to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: GROUP,
                value: Some(group),
            })
            .insert(Header {
                key: DELIVERIES,
                value: Some(&deliveries),
            });
        match delay.filter(|d| !d.is_zero()) {
            None => headers,
            Some(delay) => {
                let at =
                    (now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)).to_string();
                headers.insert(Header {
                    key: NOT_BEFORE,
                    value: Some(&at),
                })
            }
        }
    }

    /// Whether a consumer of `group` should handle this message.
    pub(super) fn is_for(&self, group: &str) -> bool {
        self.group.as_deref().map_or(true, |g| g == group)
    }

    /// How long to hold the message back from now; `None` when it is due.
    pub(super) fn wait(&self) -> Option<Duration> {
        let ms = self.not_before_ms? - now_ms();
        (ms > 0).then(|| Duration::from_millis(ms.unsigned_abs()))
    }
}

/// Now, in ms since the Unix epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_headers_read_back() {
        let h = Redelivery::nacked("workers", 3, Some(Duration::from_secs(60)));
        let r = Redelivery::read(Some(&h));
        assert_eq!(r.group.as_deref(), Some("workers"));
        assert_eq!(r.deliveries, 3);
        let wait = r.wait().expect("a delay");
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(r.is_for("workers"));
        assert!(!r.is_for("stats"));
    }

    #[test]
    fn no_delay_no_not_before() {
        let h = Redelivery::nacked("g", 1, Some(Duration::ZERO));
        let r = Redelivery::read(Some(&h));
        assert_eq!(r.not_before_ms, None);
        assert_eq!(r.wait(), None);
    }

    #[test]
    fn plain_and_malformed_messages_are_first_deliveries_for_everyone() {
        assert_eq!(
            Redelivery::read(None::<&OwnedHeaders>),
            Redelivery::default()
        );
        let h = OwnedHeaders::new()
            .insert(Header {
                key: DELIVERIES,
                value: Some("many"),
            })
            .insert(Header {
                key: NOT_BEFORE,
                value: Some("soon"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some("00-abc"),
            });
        let r = Redelivery::read(Some(&h));
        assert_eq!(r, Redelivery::default());
        assert!(r.is_for("anyone"));
    }
}
