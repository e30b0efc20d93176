//! What a backload is asked for, as the command line gives it (strings), checked into a [`Backload`].
//! Every error names the flag (or the meta file and line) and shows how to write it.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use taskbus_bus::Meta;

use super::{Backload, HourFilter, Step};
use crate::config::parse_timezone;
use crate::template::Template;
use crate::ConfigError;

/// A backload request as strings, one field per flag of `taskbus backload`.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `--type`.
    pub kind: String,
    /// `--job`.
    pub job: String,
    /// `--template`: the info.
    pub template: String,
    /// `--topic` (default: the type).
    pub topic: Option<String>,
    /// `--from`.
    pub from: String,
    /// `--to` (default: `--from`).
    pub to: Option<String>,
    /// `--by`: hour, day, week or month.
    pub by: String,
    /// `--every`: take every n-th step.
    pub every: u32,
    /// `--at`: time of day (`HH` or `HH:MM`) for day, week and month steps.
    pub at: Option<String>,
    /// `--on-hours`: hours to keep (`0-5,12`).
    pub on_hours: Option<String>,
    /// `--off-hours`: hours to drop.
    pub off_hours: Option<String>,
    /// `--timezone`: the zone of the times and templates (default UTC).
    pub timezone: Option<String>,
    /// `--meta key=a,b` (repeatable): one task per combination of values.
    pub meta: Vec<String>,
    /// `--meta-file rows.jsonl`: one task per row (a JSON object per line) per time.
    pub meta_file: Option<PathBuf>,
}

/// The time formats `--from` and `--to` accept, for error messages.
pub const TIME_FORMATS: &str =
    "2024-01-02, 2024-01-02T15, 2024-01-02T15:04, 2024-01-02T15:04:05, RFC 3339 (2024-01-02T15:04:05Z), now, today or yesterday";

impl Request {
    /// Checks the request; `now` resolves `now`, `today` and `yesterday`.
    pub fn build(&self, now: DateTime<Utc>) -> Result<Backload, ConfigError> {
        let flag = |f: &str, m: String| ConfigError::flag(f, m);
        let tz = match &self.timezone {
            Some(s) => parse_timezone(s).map_err(|m| flag("--timezone", m))?,
            None => chrono_tz::UTC,
        };
        taskbus_bus::check_name("topic", &self.kind).map_err(|e| flag("--type", e.to_string()))?;
        let topic = self.topic.clone().unwrap_or_else(|| self.kind.clone());
        taskbus_bus::check_name("topic", &topic).map_err(|e| flag("--topic", e.to_string()))?;
        let template =
            Template::parse(&self.template).map_err(|e| flag("--template", e.to_string()))?;
        let by: Step = self.by.parse().map_err(|m| flag("--by", m))?;
        let from = parse_time(&self.from, tz, now).map_err(|m| flag("--from", m))?;
        let to = match &self.to {
            Some(s) => parse_time(s, tz, now).map_err(|m| flag("--to", m))?,
            None => from,
        };
        let at = match &self.at {
            None => None,
            Some(_) if by == Step::Hour => {
                return Err(flag("--at", "--at sets the time of day for --by day, week or month; with --by hour start --from at the minute you want".to_owned()))
            }
            Some(s) => Some(parse_at(s).map_err(|m| flag("--at", m))?),
        };
        let mut hours = HourFilter::default();
        if let Some(s) = &self.on_hours {
            hours.on = parse_hours(s).map_err(|m| flag("--on-hours", m))?;
        }
        if let Some(s) = &self.off_hours {
            hours.off = parse_hours(s).map_err(|m| flag("--off-hours", m))?;
        }
        if self.every == 0 {
            return Err(flag(
                "--every",
                "--every 0 never advances; use 1 or more".to_owned(),
            ));
        }
        let mut rows = match &self.meta_file {
            Some(path) => read_meta_file(path)?,
            None => vec![Meta::new()],
        };
        for spec in &self.meta {
            let (key, values) = parse_meta_list(spec).map_err(|m| flag("--meta", m))?;
            rows = rows
                .iter()
                .flat_map(|row| {
                    values.iter().map(|v| {
                        let mut r = row.clone();
                        r.set(key.as_str(), v);
                        r
                    })
                })
                .collect();
        }
        if let Some(missing) = template
            .meta_keys()
            .find(|k| rows.iter().any(|r| r.get(k).is_none()))
        {
            return Err(flag("--template", format!(
                "{{meta:{missing}}} reads meta key {missing:?}; give it with --meta {missing}=VALUE or in every row of --meta-file"
            )));
        }
        Ok(Backload {
            kind: self.kind.clone(),
            job: self.job.clone(),
            template,
            topic,
            from,
            to,
            by,
            every: self.every,
            at,
            hours,
            rows,
        })
    }
}

/// Parses a time of `--from`/`--to` in `tz`.
pub fn parse_time(s: &str, tz: Tz, now: DateTime<Utc>) -> Result<DateTime<Tz>, String> {
    let s = s.trim();
    let today = || now.with_timezone(&tz).date_naive().and_time(NaiveTime::MIN);
    let local = |naive: NaiveDateTime| {
        tz.from_local_datetime(&naive)
            .earliest()
            .ok_or_else(|| format!("{s:?} does not exist in {tz} (a daylight-saving gap)"))
    };
    match s.to_ascii_lowercase().as_str() {
        "now" => return Ok(now.with_timezone(&tz)),
        "today" => return local(today()),
        "yesterday" => return local(today() - chrono::Duration::days(1)),
        _ => {}
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&tz));
    }
    let normalized = s.replacen(' ', "T", 1);
    if let Ok(d) = NaiveDate::parse_from_str(&normalized, "%Y-%m-%d") {
        return local(d.and_time(NaiveTime::MIN));
    }
    for (suffix, format) in [
        ("", "%Y-%m-%dT%H:%M:%S"),
        ("", "%Y-%m-%dT%H:%M"),
        (":00", "%Y-%m-%dT%H:%M"),
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&format!("{normalized}{suffix}"), format) {
            return local(t);
        }
    }
    Err(format!("{s:?} is not a time; write {TIME_FORMATS}"))
}

fn parse_at(s: &str) -> Result<NaiveTime, String> {
    let full = if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:00")
    };
    NaiveTime::parse_from_str(&full, "%H:%M")
        .map_err(|_| format!("{s:?} is not a time of day; write HH or HH:MM, like 06 or 06:30"))
}

/// Parses hours like `0-5,12,22-23` into a bit set.
pub fn parse_hours(s: &str) -> Result<u32, String> {
    let mut bits = 0u32;
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let hour = |h: &str| -> Result<u32, String> {
            match h.trim().parse::<u32>() {
                Ok(v) if v < 24 => Ok(v),
                _ => Err(format!(
                    "{h:?} in {s:?} is not an hour 0-23; write hours like 0-5,12,22-23"
                )),
            }
        };
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (hour(a)?, hour(b)?),
            None => (hour(item)?, hour(item)?),
        };
        if lo > hi {
            return Err(format!(
                "range {item:?} goes backwards; write the smaller hour first"
            ));
        }
        (lo..=hi).for_each(|h| bits |= 1 << h);
    }
    if bits == 0 {
        return Err(format!(
            "{s:?} names no hour; write hours like 0-5,12,22-23"
        ));
    }
    Ok(bits)
}

/// Parses `key=a,b,c`.
pub fn parse_meta_list(s: &str) -> Result<(String, Vec<String>), String> {
    let (key, values) = s
        .split_once(['=', ':'])
        .filter(|(k, _)| !k.trim().is_empty())
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE[,VALUE…]; write it like region=eu,us"))?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
    Ok((key.trim().to_owned(), values))
}

/// Reads a JSON-lines meta file: one JSON object of strings, numbers or booleans per line (blank
/// lines and lines starting with `#` are skipped). Errors name the file and line.
pub fn read_meta_file(path: &Path) -> Result<Vec<Meta>, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::flag(
            format!("--meta-file {name}"),
            format!("cannot read it ({e})"),
        )
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |message: String| ConfigError {
            source_name: name.clone(),
            line: Some(i + 1),
            column: None,
            key: None,
            message,
        };
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .map_err(|e| at(format!("not a JSON object ({e}); write one object per line, like {{\"region\":\"eu\"}}")))?;
        let mut meta = Meta::new();
        for (k, v) in object {
            let value = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(at(format!(
                        "key {k:?} has {other}, which is not a string, number or boolean"
                    )))
                }
            };
            meta.set(k, value);
        }
        rows.push(meta);
    }
    if rows.is_empty() {
        return Err(ConfigError::flag(
            format!("--meta-file {name}"),
            "the file has no rows",
        ));
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2024-03-10T15:30:00Z".parse().unwrap()
    }

    fn request(from: &str, to: Option<&str>) -> Request {
        Request {
            kind: "t".into(),
            template: "{yyyy}{mm}{dd}".into(),
            from: from.into(),
            to: to.map(Into::into),
            by: "day".into(),
            every: 1,
            ..Request::default()
        }
    }

    #[test]
    fn time_formats() {
        let utc = chrono_tz::UTC;
        let f = |s: &str| parse_time(s, utc, now()).unwrap().to_rfc3339();
        assert_eq!(f("2024-01-02"), "2024-01-02T00:00:00+00:00");
        assert_eq!(f("2024-01-02T15"), "2024-01-02T15:00:00+00:00");
        assert_eq!(f("2024-01-02 15:04"), "2024-01-02T15:04:00+00:00");
        assert_eq!(f("2024-01-02T15:04:05"), "2024-01-02T15:04:05+00:00");
        assert_eq!(f("2024-01-02T15:04:05+02:00"), "2024-01-02T13:04:05+00:00");
        assert_eq!(f("today"), "2024-03-10T00:00:00+00:00");
        assert_eq!(f("yesterday"), "2024-03-09T00:00:00+00:00");
        let paris = parse_time("2024-07-01", chrono_tz::Europe::Paris, now()).unwrap();
        assert_eq!(
            paris.with_timezone(&Utc).to_rfc3339(),
            "2024-06-30T22:00:00+00:00"
        );
    }

    #[test]
    fn bad_flags_are_named() {
        let err = request("2024-01-05", Some("2024/01/01"))
            .build(now())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--to: \"2024/01/01\" is not a time"),
            "{err}"
        );
        let err = request("yesterdayish", None)
            .build(now())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--from:"), "{err}");
        let mut r = request("2024-01-05", None);
        r.template = "{yyyy}{mmm}".into();
        let err = r.build(now()).unwrap_err().to_string();
        assert!(
            err.starts_with("--template:") && err.contains("{mmm}"),
            "{err}"
        );
        let mut r = request("2024-01-05", None);
        r.on_hours = Some("3-25".into());
        assert!(r
            .build(now())
            .unwrap_err()
            .to_string()
            .starts_with("--on-hours:"));
        let mut r = request("2024-01-05", None);
        r.by = "fortnight".into();
        assert!(r.build(now()).unwrap_err().to_string().starts_with("--by:"));
        let mut r = request("2024-01-05", None);
        r.template = "{meta:region}".into();
        assert!(r
            .build(now())
            .unwrap_err()
            .to_string()
            .contains("--meta region=VALUE"));
    }

    #[test]
    fn reversed_range_runs_newest_first() {
        let b = request("2024-01-05", Some("2024-01-03"))
            .build(now())
            .unwrap();
        let infos: Vec<_> = b
            .tasks(&b.times(100).unwrap())
            .unwrap()
            .into_iter()
            .map(|t| t.info)
            .collect();
        assert_eq!(infos, ["20240105", "20240104", "20240103"]);
    }

    #[test]
    fn meta_lists_multiply_and_meta_files_name_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(
            &path,
            "{\"region\":\"eu\",\"n\":1}\n\n{\"region\":\"us\",\"n\":2}\n",
        )
        .unwrap();
        let mut r = request("2024-01-05", None);
        r.meta_file = Some(path.clone());
        r.meta = vec!["tier=a,b".into()];
        r.template = "{meta:region}-{meta:tier}-{meta:n}".into();
        let b = r.build(now()).unwrap();
        let infos: Vec<_> = b
            .tasks(&b.times(100).unwrap())
            .unwrap()
            .into_iter()
            .map(|t| t.info)
            .collect();
        assert_eq!(infos, ["eu-a-1", "eu-b-1", "us-a-2", "us-b-2"]);
        std::fs::write(&path, "{\"region\":\"eu\"}\n[1,2]\n").unwrap();
        let err = read_meta_file(&path).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(
            err.to_string().contains("rows.jsonl:2: not a JSON object"),
            "{err}"
        );
    }
}
