//! Info and meta templates with pcelvng/task's placeholders, compiled once when a rule loads.
//!
//! | placeholder | becomes | example |
//! |---|---|---|
//! | `{yyyy}` `{yy}` | year, four or two digits | `2024`, `24` |
//! | `{mm}` `{dd}` `{hh}` | month, day, hour, two digits | `01`, `02`, `15` |
//! | `{min}` `{ss}` | minute, second, two digits | `04`, `05` |
//! | `{TS}` | timestamp | `20240102T150405` |
//! | `{SLUG}` (= `{HOUR_SLUG}`) | `{yyyy}/{mm}/{dd}/{hh}` | `2024/01/02/15` |
//! | `{DAY_SLUG}` `{MONTH_SLUG}` | `{yyyy}/{mm}/{dd}`, `{yyyy}/{mm}` | `2024/01/02` |
//! | `{host}` | the host name | `worker-7f9c-x2x1` |
//! | `{pod}` | the last two `-` parts of the host name (a Kubernetes pod's unique part) | `7f9c-x2x1` |
//! | `{uuid}` | 8 random hex digits, the same for every `{uuid}` of one rendering | `9b2c41d0` |
//! | `{meta:KEY}` | the value of `KEY` in the task's meta | |
//!
//! Placeholder names are matched in any case (`{YYYY}`, `{uuid}` and `{UUID}` alike — pcelvng replaced
//! only a lowercase `{uuid}`, and only once). Text from the first `#` on is copied as it is. Times are
//! rendered in the zone of the [`Vars`] time: UTC unless a rule names a zone (pcelvng used the
//! machine's local time). A `{word}` that is not a placeholder is an error when the template is
//! compiled, naming it; braces around anything else (`{"a":1}`) are plain text.
//!
//! ```
//! use taskbus_taskmaster::template::{Template, Vars};
//! use chrono::TimeZone;
//!
//! let t: Template = "s3://bucket/{DAY_SLUG}/{hh}.json?day={yyyy}-{mm}-{dd}#{hh}".parse()?;
//! let time = chrono_tz::UTC.with_ymd_and_hms(2024, 1, 2, 15, 4, 5).unwrap();
//! assert_eq!(t.render(&Vars::at(time))?, "s3://bucket/2024/01/02/15.json?day=2024-01-02#{hh}");
//! assert!("{yyyy}/{dday}".parse::<Template>().unwrap_err().to_string().contains("{dday}"));
//! # Ok::<(), taskbus_taskmaster::TemplateError>(())
//! ```

mod parse;

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;
use taskbus_bus::Meta;

use crate::TemplateError;
use parse::Piece;

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

/// What a template is rendered with: a time (in the zone its placeholders use) and optionally a meta.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    time: DateTime<Tz>,
    meta: Option<&'a Meta>,
    host: Option<&'a str>,
}

impl<'a> Vars<'a> {
    /// Variables for `time`, without meta.
    pub fn at(time: DateTime<Tz>) -> Self {
        Vars {
            time,
            meta: None,
            host: None,
        }
    }

    /// Adds the meta that `{meta:KEY}` reads (builder style).
    pub fn meta(mut self, meta: &'a Meta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Uses `host` for `{host}` and `{pod}` instead of this machine's name (builder style).
    pub fn host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }
}

impl Template {
    /// Compiles `source`; an unknown placeholder is an error naming it.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        Ok(Template {
            source: source.to_owned(),
            pieces: parse::compile(source)?,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The meta keys `{meta:KEY}` placeholders read, in order of appearance.
    pub fn meta_keys(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Meta(k) => Some(k.as_str()),
            _ => None,
        })
    }

    /// Renders the template; fails only when a `{meta:KEY}` is missing from the meta.
    pub fn render(&self, vars: &Vars<'_>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        let t = &vars.time;
        let host = vars.host.unwrap_or_else(|| hostname());
        let mut uuid: Option<String> = None;
        for piece in &self.pieces {
            // Writing to a String cannot fail.
            let _ = match piece {
                Piece::Text(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Piece::Year4 => write!(out, "{:04}", t.year()),
                Piece::Year2 => write!(out, "{:02}", t.year().rem_euclid(100)),
                Piece::Month => write!(out, "{:02}", t.month()),
                Piece::Day => write!(out, "{:02}", t.day()),
                Piece::Hour => write!(out, "{:02}", t.hour()),
                Piece::Minute => write!(out, "{:02}", t.minute()),
                Piece::Second => write!(out, "{:02}", t.second()),
                Piece::Timestamp => write!(out, "{}", t.format("%Y%m%dT%H%M%S")),
                Piece::HourSlug => write!(out, "{}", t.format("%Y/%m/%d/%H")),
                Piece::DaySlug => write!(out, "{}", t.format("%Y/%m/%d")),
                Piece::MonthSlug => write!(out, "{}", t.format("%Y/%m")),
                Piece::Host => {
                    out.push_str(host);
                    Ok(())
                }
                Piece::Pod => {
                    out.push_str(&pod(host));
                    Ok(())
                }
                Piece::Uuid => {
                    let id = uuid.get_or_insert_with(|| {
                        uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
                    });
                    out.push_str(id);
                    Ok(())
                }
                Piece::Meta(key) => {
                    let value = vars.meta.and_then(|m| m.get(key)).ok_or_else(|| {
                        TemplateError::MissingMeta {
                            template: self.source.clone(),
                            key: key.clone(),
                        }
                    })?;
                    out.push_str(value);
                    Ok(())
                }
            };
        }
        Ok(out)
    }
}

impl FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// This machine's host name: `$HOSTNAME`, else the kernel's, else `localhost`.
pub fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// The unique part of a Kubernetes pod's host name: its last two `-`-separated parts.
fn pod(host: &str) -> String {
    let parts: Vec<&str> = host.split('-').collect();
    parts[parts.len().saturating_sub(2)..].join("-")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Tz> {
        chrono_tz::UTC.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn render(t: &str, time: DateTime<Tz>) -> String {
        Template::parse(t)
            .unwrap()
            .render(&Vars::at(time).host("web-7f9c-x2x1"))
            .unwrap()
    }

    #[test]
    fn date_placeholders_in_any_case() {
        let t = at(2024, 1, 2, 15, 4, 5);
        assert_eq!(
            render("{yyyy}-{MM}-{Dd}T{HH}:{min}:{ss} {YY}", t),
            "2024-01-02T15:04:05 24"
        );
        assert_eq!(
            render("{TS}|{SLUG}|{hour_slug}|{DAY_SLUG}|{month_slug}", t),
            "20240102T150405|2024/01/02/15|2024/01/02/15|2024/01/02|2024/01"
        );
    }

    #[test]
    fn host_pod_and_uuid_in_any_case() {
        let t = at(2024, 1, 2, 15, 4, 5);
        assert_eq!(render("{host} {POD}", t), "web-7f9c-x2x1 7f9c-x2x1");
        let out = render("{uuid}/{UUID}", t);
        let (a, b) = out.split_once('/').unwrap();
        assert_eq!(a.len(), 8);
        assert_eq!(a, b, "one id per rendering");
        assert_ne!(render("{uuid}", t), render("{uuid}", t));
        assert_eq!(pod("single"), "single");
    }

    #[test]
    fn nothing_after_hash_is_replaced() {
        let t = at(2024, 1, 2, 15, 4, 5);
        assert_eq!(render("a/{yyyy}#{yyyy}{bogus}", t), "a/2024#{yyyy}{bogus}");
        assert_eq!(render("#{yyyy}", t), "#{yyyy}");
    }

    #[test]
    fn time_zone_of_the_time_is_used() {
        let utc = at(2024, 7, 1, 22, 30, 0);
        let paris = utc.with_timezone(&chrono_tz::Europe::Paris);
        assert_eq!(render("{dd} {hh}", utc), "01 22");
        assert_eq!(render("{dd} {hh}", paris), "02 00");
    }

    #[test]
    fn meta_placeholders_read_the_meta() {
        let t = Template::parse("?x={meta:region}&y={META:run-id}").unwrap();
        assert_eq!(t.meta_keys().collect::<Vec<_>>(), ["region", "run-id"]);
        let meta: Meta = "region=eu&run-id=7".parse().unwrap();
        let out = t
            .render(&Vars::at(at(2024, 1, 2, 0, 0, 0)).meta(&meta))
            .unwrap();
        assert_eq!(out, "?x=eu&y=7");
        let err = t.render(&Vars::at(at(2024, 1, 2, 0, 0, 0))).unwrap_err();
        assert!(err.to_string().contains("\"region\""), "{err}");
    }

    #[test]
    fn unknown_placeholder_is_an_error_naming_it() {
        let err = Template::parse("s3://b/{yyyy}/{dday}.json").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("{dday}"), "{msg}");
        assert!(msg.contains("byte 14"), "{msg}");
        assert!(msg.contains("{DAY_SLUG}"), "{msg}");
        assert!(Template::parse("{meta:}")
            .unwrap_err()
            .to_string()
            .contains("{meta:KEY}"));
    }

    #[test]
    fn other_braces_are_text() {
        let t = at(2024, 1, 2, 0, 0, 0);
        assert_eq!(
            render(r#"{"day":"{yyyy}-{mm}-{dd}"} {} { x } {"#, t),
            r#"{"day":"2024-01-02"} {} { x } {"#
        );
    }
}
