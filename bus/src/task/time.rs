//! Task times: RFC 3339 in UTC on the wire, fractional seconds accepted.

use chrono::{DateTime, SecondsFormat, Utc};

/// The current time, truncated to milliseconds (what the framework stamps on tasks).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// Parses a wire time. `""` and Go's zero time (`0001-01-01T00:00:00Z`) mean "not set".
pub fn parse(s: &str) -> Result<Option<DateTime<Utc>>, chrono::ParseError> {
    if s.is_empty() {
        return Ok(None);
    }
    let t = DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc);
    if t.timestamp() == GO_ZERO_TIME {
        return Ok(None);
    }
    Ok(Some(t))
}

/// Formats a time for the wire: UTC with a `Z`, fractional seconds only when there are any.
pub fn format(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Seconds of `0001-01-01T00:00:00Z`, Go's zero `time.Time`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractions_offsets_and_zero_times() {
        let t = parse("2024-01-02T15:04:05.250+02:00").unwrap().unwrap();
        assert_eq!(format(&t), "2024-01-02T13:04:05.250Z");
        let t = parse("2024-01-02T15:04:05Z").unwrap().unwrap();
        assert_eq!(format(&t), "2024-01-02T15:04:05Z");
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("0001-01-01T00:00:00Z").unwrap(), None);
        assert!(parse("2024-13-02T15:04:05Z").is_err());
    }
}
