//! Cron expressions: when a rule fires.
//!
//! - Five fields `minute hour day-of-month month day-of-week`, or six with `second` first.
//! - Each field: `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, or a list of those
//!   separated by commas. Months may be written `JAN`–`DEC` and days `SUN`–`SAT` (any case); day of
//!   week `0` and `7` are both Sunday. `?` is `*` in the two day fields.
//! - As in Vixie cron, when both day fields are restricted a day matches either of them; when one is
//!   `*`, only the other counts.
//! - Shorthands: `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`, and
//!   `@every DURATION` (`@every 90s`, `@every 15m`): ticks at whole multiples of the duration since
//!   1970-01-01T00:00:00Z, so every replica computes the same ticks.
//!
//! Fields are read in the schedule's time zone (UTC unless a rule names one). Across daylight-saving
//! changes, a local time that does not exist (the hour skipped in spring) fires when the clocks have
//! jumped (02:30 becomes 03:30), and a local time that happens twice (the hour repeated in autumn)
//! fires once, the first time.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::ScheduleError;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expr: String,
    tz: Tz,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fields(Box<Fields>),
    Every(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: FieldSpec = FieldSpec {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const WEEKDAY: FieldSpec = FieldSpec {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// How far ahead a search for the next tick looks before deciding an expression never fires
/// (`0 0 30 2 *`); long enough for `0 0 29 2 MON`, which fires once in up to 28 years.
const SEARCH_YEARS: i32 = 60;

impl Schedule {
    /// Parses `expr`, read in `tz`. An expression that can never fire is an error too.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let error = |reason: String| ScheduleError {
            expr: expr.to_owned(),
            reason,
        };
        let trimmed = expr.trim();
        let kind = if let Some(rest) = trimmed.strip_prefix("@every") {
            Kind::Every(parse_every(rest).map_err(error)?)
        } else {
            let fields = match trimmed.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 0 1 1 *".to_owned(),
                "@monthly" => "0 0 0 1 * *".to_owned(),
                "@weekly" => "0 0 0 * * 0".to_owned(),
                "@daily" | "@midnight" => "0 0 0 * * *".to_owned(),
                "@hourly" => "0 0 * * * *".to_owned(),
                s if s.starts_with('@') => {
                    return Err(error(format!(
                        "unknown shorthand {trimmed:?}; use @yearly, @monthly, @weekly, @daily, @hourly or @every 5m"
                    )))
                }
                _ => trimmed.to_owned(),
            };
            Kind::Fields(Box::new(parse_fields(&fields).map_err(error)?))
        };
        let schedule = Schedule {
            expr: trimmed.to_owned(),
            tz,
            kind,
        };
        let epoch = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(365 * 54);
        if schedule.next_after(epoch).is_none() {
            return Err(error(
                "it never fires (no such date); check the day and month fields".to_owned(),
            ));
        }
        Ok(schedule)
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone its fields are read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `after`, or `None` if there is none in the next 60 years.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every(step) => {
                let s = after.timestamp();
                let next = (s.div_euclid(*step) + 1) * step;
                DateTime::from_timestamp(next, 0)
            }
            Kind::Fields(fields) => fields.next_after(after, self.tz),
        }
    }

    /// The ticks in `(after, until]`, oldest first.
    pub fn ticks_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let next = self.next_after(cursor).filter(|t| *t <= until)?;
            cursor = next;
            Some(next)
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expr, self.tz)
    }
}

fn parse_every(rest: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(rest.trim()).map_err(|e| {
        format!("@every needs a duration ({e}); write it like @every 30s or @every 15m")
    })?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err(format!(
            "@every {} must be a whole number of seconds, at least 1s",
            rest.trim()
        ));
    }
    i64::try_from(d.as_secs()).map_err(|_| "@every duration is too long".to_owned())
}

fn parse_fields(expr: &str) -> Result<Fields, String> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let (sec, rest) = match parts.len() {
        5 => ("0", &parts[..]),
        6 => (parts[0], &parts[1..]),
        n => {
            return Err(format!(
                "it has {n} fields; write 5 (minute hour day-of-month month day-of-week), 6 (second first), \
                 or @hourly, @daily, @weekly, @monthly, @yearly, @every 5m"
            ))
        }
    };
    let mut weekdays = parse_field(rest[4], &WEEKDAY)?;
    if weekdays & (1 << 7) != 0 {
        weekdays = (weekdays | 1) & !(1 << 7);
    }
    Ok(Fields {
        seconds: parse_field(sec, &SECOND)?,
        minutes: parse_field(rest[0], &MINUTE)?,
        hours: parse_field(rest[1], &HOUR)?,
        days: parse_field(rest[2], &DAY)?,
        months: parse_field(rest[3], &MONTH)?,
        weekdays,
        days_restricted: !is_star(rest[2]),
        weekdays_restricted: !is_star(rest[4]),
    })
}

fn is_star(field: &str) -> bool {
    field.starts_with('*') || field.starts_with('?')
}

/// A field as a bit set of the values it matches.
fn parse_field(field: &str, spec: &FieldSpec) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in field.split(',') {
        bits |= parse_item(item, spec)
            .map_err(|reason| format!("{} field {field:?}: {reason}", spec.name))?;
    }
    Ok(bits)
}

fn parse_item(item: &str, spec: &FieldSpec) -> Result<u64, String> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s
                .parse()
                .map_err(|_| format!("step {s:?} is not a number"))?;
            if step == 0 {
                return Err("a step of 0 never advances; use 1 or more".to_owned());
            }
            (r, Some(step))
        }
        None => (item, None),
    };
    let day_field = spec.name == DAY.name || spec.name == WEEKDAY.name;
    let (lo, hi) = if range == "*" || (range == "?" && day_field) {
        (spec.min, spec.max)
    } else if range == "?" {
        return Err("'?' is only allowed in the day fields".to_owned());
    } else if let Some((a, b)) = range.split_once('-') {
        (value(a, spec)?, value(b, spec)?)
    } else {
        let v = value(range, spec)?;
        (v, if step.is_some() { spec.max } else { v })
    };
    if lo > hi {
        return Err(format!(
            "range {range:?} goes backwards; write the smaller value first"
        ));
    }
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1 << v;
        v += step.unwrap_or(1);
    }
    Ok(bits)
}

fn value(s: &str, spec: &FieldSpec) -> Result<u32, String> {
    if s.is_empty() {
        return Err("a value is missing".to_owned());
    }
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(spec.min + u32::try_from(i).unwrap_or(0));
    }
    let v: u32 = s.parse().map_err(|_| {
        let names = if spec.names.is_empty() {
            String::new()
        } else {
            format!(" or a name ({}…)", spec.names[..3].join(", "))
        };
        format!("{s:?} is not a number{names}")
    })?;
    if v < spec.min || v > spec.max {
        return Err(format!("{v} is out of range {}-{}", spec.min, spec.max));
    }
    Ok(v)
}

impl Fields {
    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.days_restricted && self.weekdays_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(&tz).naive_local().with_nanosecond(0)?;
        let mut t = start + chrono::Duration::seconds(1);
        let limit = t.year() + SEARCH_YEARS;
        while t.year() <= limit {
            if self.months & (1 << t.month()) == 0 {
                t = first_of_next_month(t)?;
            } else if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)?.with_second(0)? + chrono::Duration::hours(1);
            } else if self.minutes & (1 << t.minute()) == 0 {
                t = t.with_second(0)? + chrono::Duration::minutes(1);
            } else if self.seconds & (1 << t.second()) == 0 {
                t += chrono::Duration::seconds(1);
            } else {
                match resolve(tz, t) {
                    Some(instant) if instant > after => return Some(instant),
                    _ => t += chrono::Duration::seconds(1),
                }
            }
        }
        None
    }
}

fn first_of_next_month(t: NaiveDateTime) -> Option<NaiveDateTime> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)
}

/// The instant of local time `t`: the first of two in a repeated hour; for a time skipped by a
/// daylight-saving jump, the same wall-clock distance after the jump.
fn resolve(tz: Tz, t: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(x) => Some(x.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            let before = tz
                .from_local_datetime(&(t - chrono::Duration::hours(4)))
                .earliest()?;
            let offset = chrono::Offset::fix(before.offset());
            Some(DateTime::from_naive_utc_and_offset(t - offset, Utc))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, tz: Tz, after: &str) -> String {
        let s = Schedule::parse(expr, tz).unwrap();
        s.next_after(utc(after)).unwrap().to_rfc3339()
    }

    fn take(expr: &str, after: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(expr, chrono_tz::UTC).unwrap();
        let mut t = utc(after);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.format("%Y-%m-%dT%H:%M:%S").to_string()
            })
            .collect()
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            take("*/15 * * * *", "2024-01-02T10:07:00Z", 3),
            [
                "2024-01-02T10:15:00",
                "2024-01-02T10:30:00",
                "2024-01-02T10:45:00"
            ]
        );
        assert_eq!(
            take("*/20 * * * * *", "2024-01-02T10:07:59Z", 3),
            [
                "2024-01-02T10:08:00",
                "2024-01-02T10:08:20",
                "2024-01-02T10:08:40"
            ]
        );
        assert_eq!(
            take("0 30 9 * * MON-FRI", "2024-01-05T10:00:00Z", 2),
            ["2024-01-08T09:30:00", "2024-01-09T09:30:00"]
        );
        assert_eq!(
            take("0 0 1,15 * *", "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-15T00:00:00",
                "2024-02-01T00:00:00",
                "2024-02-15T00:00:00"
            ]
        );
        assert_eq!(
            take("0 12 * JAN,jul *", "2024-01-31T12:00:00Z", 1),
            ["2024-07-01T12:00:00"]
        );
        assert_eq!(
            take("5/20 * * * *", "2024-01-02T10:45:00Z", 2),
            ["2024-01-02T11:05:00", "2024-01-02T11:25:00"]
        );
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday.
        assert_eq!(
            take("0 0 13 * 5", "2024-09-01T00:00:00Z", 3),
            [
                "2024-09-06T00:00:00",
                "2024-09-13T00:00:00",
                "2024-09-20T00:00:00"
            ]
        );
        // Sunday as 0 and as 7.
        assert_eq!(
            take("0 0 * * 7", "2024-01-01T00:00:00Z", 1),
            take("0 0 * * 0", "2024-01-01T00:00:00Z", 1)
        );
        assert_eq!(
            take("0 0 29 2 *", "2024-03-01T00:00:00Z", 1),
            ["2028-02-29T00:00:00"]
        );
    }

    #[test]
    fn shorthands() {
        assert_eq!(
            take("@hourly", "2024-01-02T10:07:00Z", 1),
            ["2024-01-02T11:00:00"]
        );
        assert_eq!(
            take("@daily", "2024-01-02T10:07:00Z", 1),
            ["2024-01-03T00:00:00"]
        );
        assert_eq!(
            take("@weekly", "2024-01-02T10:07:00Z", 1),
            ["2024-01-07T00:00:00"]
        );
        assert_eq!(
            take("@monthly", "2024-01-02T10:07:00Z", 1),
            ["2024-02-01T00:00:00"]
        );
        assert_eq!(
            take("@yearly", "2024-01-02T10:07:00Z", 1),
            ["2025-01-01T00:00:00"]
        );
        assert_eq!(
            take("@every 90s", "2024-01-02T10:07:00Z", 2),
            ["2024-01-02T10:07:30", "2024-01-02T10:09:00"]
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let paris = chrono_tz::Europe::Paris;
        assert_eq!(
            next("0 9 * * *", paris, "2024-07-01T00:00:00Z"),
            "2024-07-01T07:00:00+00:00"
        );
        assert_eq!(
            next("0 9 * * *", paris, "2024-01-01T00:00:00Z"),
            "2024-01-01T08:00:00+00:00"
        );
        // 2024-03-31 02:30 does not exist in Paris: it fires at 03:30 local (01:30 UTC).
        assert_eq!(
            next("30 2 * * *", paris, "2024-03-30T12:00:00Z"),
            "2024-03-31T01:30:00+00:00"
        );
        // 2024-10-27 02:30 happens twice: it fires once, the first time (00:30 UTC).
        let s = Schedule::parse("30 2 * * *", paris).unwrap();
        let first = s.next_after(utc("2024-10-26T12:00:00Z")).unwrap();
        assert_eq!(first.to_rfc3339(), "2024-10-27T00:30:00+00:00");
        assert_eq!(
            s.next_after(first).unwrap().to_rfc3339(),
            "2024-10-28T01:30:00+00:00"
        );
    }

    #[test]
    fn ticks_between_is_half_open() {
        let s = Schedule::parse("*/10 * * * *", chrono_tz::UTC).unwrap();
        let ticks: Vec<_> = s
            .ticks_between(utc("2024-01-02T10:00:00Z"), utc("2024-01-02T10:30:00Z"))
            .collect();
        assert_eq!(
            ticks,
            [
                utc("2024-01-02T10:10:00Z"),
                utc("2024-01-02T10:20:00Z"),
                utc("2024-01-02T10:30:00Z")
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |e: &str| Schedule::parse(e, chrono_tz::UTC).unwrap_err().to_string();
        assert!(
            err("61 * * * *").contains("minute field \"61\": 61 is out of range 0-59"),
            "{}",
            err("61 * * * *")
        );
        assert!(err("* * * *").contains("4 fields"));
        assert!(err("0 25 * * *").contains("hour"));
        assert!(err("0 0 * FOO *").contains("month field \"FOO\""));
        assert!(err("*/0 * * * *").contains("step of 0"));
        assert!(err("0 0 5-1 * *").contains("backwards"));
        assert!(err("0 0 30 2 *").contains("never fires"));
        assert!(err("@fortnightly").contains("@every"));
        assert!(err("@every soon").contains("@every 30s"));
        assert!(err("? * * * *").contains("only allowed in the day fields"));
    }
}
