//! JSON to and from bytes, in pcelvng/task's field order, with errors that name the field.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{time, Meta, Task, TaskResult, UnknownResult};

/// Bytes that are not a valid task.
#[derive(Debug, thiserror::Error)]
#[error("invalid task: {reason} (in {excerpt})")]
pub struct TaskDecodeError {
    reason: String,
    excerpt: String,
}

impl TaskDecodeError {
    /// What was wrong, naming the field and the bad value where there is one.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    if bytes.len() > MAX {
        format!("{text}… ({} bytes)", bytes.len())
    } else {
        text.into_owned()
    }
}

impl Task {
    /// Parses one task from JSON bytes (a trailing newline is fine).
    pub fn from_json(bytes: &[u8]) -> Result<Task, TaskDecodeError> {
        serde_json::from_slice(bytes).map_err(|e| TaskDecodeError {
            reason: e.to_string(),
            excerpt: excerpt(bytes),
        })
    }

    /// The task as one line of JSON, without a trailing newline.
    pub fn to_json(&self) -> String {
        String::from_utf8(self.to_json_bytes()).unwrap_or_default()
    }

    /// The task as JSON bytes, without a trailing newline.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        out
    }

    /// Appends the task's JSON to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serializing strings, and values that came from JSON, into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }
}

impl Serialize for Task {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", &self.kind)?;
        if !self.job.is_empty() {
            map.serialize_entry("job", &self.job)?;
        }
        if !self.info.is_empty() {
            map.serialize_entry("info", &self.info)?;
        }
        if let Some(t) = &self.created {
            map.serialize_entry("created", &time::format(t))?;
        }
        if !self.id.is_empty() {
            map.serialize_entry("id", &self.id)?;
        }
        if !self.meta.is_empty() {
            map.serialize_entry("meta", &self.meta.to_string())?;
        }
        if let Some(r) = self.result {
            map.serialize_entry("result", r.as_str())?;
        }
        if !self.msg.is_empty() {
            map.serialize_entry("msg", &self.msg)?;
        }
        if let Some(t) = &self.started {
            map.serialize_entry("started", &time::format(t))?;
        }
        if let Some(t) = &self.ended {
            map.serialize_entry("ended", &time::format(t))?;
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TaskVisitor)
    }
}

struct TaskVisitor;

/// A string field that may also be JSON `null` (read as empty).
fn string<'de, A: MapAccess<'de>>(map: &mut A, field: &str) -> Result<String, A::Error> {
    match map.next_value::<Value>()? {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        other => Err(de::Error::custom(format_args!(
            "field `{field}` must be a string, found {}",
            cut(&other.to_string(), |s| s.to_owned())
        ))),
    }
}

/// `value` shown by `show` for an error message, cut after 80 characters so that a huge bad value
/// does not make a huge error (and dead-letter reason).
fn cut(value: &str, show: impl Fn(&str) -> String) -> String {
    match value.char_indices().nth(80) {
        None => show(value),
        Some((end, _)) => format!("{}… ({} bytes)", show(&value[..end]), value.len()),
    }
}

fn quoted(value: &str) -> String {
    cut(value, |s| format!("{s:?}"))
}

fn time_field<'de, A: MapAccess<'de>>(
    map: &mut A,
    field: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, A::Error> {
    let s = string(map, field)?;
    time::parse(&s).map_err(|e| {
        de::Error::custom(format_args!(
            "field `{field}` has {}, which is not an RFC 3339 time ({e}); write it like 2024-01-02T15:04:05Z",
            quoted(&s)
        ))
    })
}

impl<'de> Visitor<'de> for TaskVisitor {
    type Value = Task;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task object such as {\"type\":\"hello\",\"info\":\"...\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Task, A::Error> {
        let mut task = Task::default();
        let mut has_type = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    task.kind = string(&mut map, "type")?;
                    has_type = true;
                }
                "job" => task.job = string(&mut map, "job")?,
                "info" => task.info = string(&mut map, "info")?,
                "created" => task.created = time_field(&mut map, "created")?,
                "id" => task.id = string(&mut map, "id")?,
                "meta" => {
                    let s = string(&mut map, "meta")?;
                    task.meta = s.parse::<Meta>().unwrap_or_default();
                }
                "result" => {
                    let s = string(&mut map, "result")?;
                    task.result = if s.is_empty() {
                        None
                    } else {
                        Some(s.parse::<TaskResult>().map_err(|_| {
                            let e = UnknownResult(cut(&s, str::to_owned));
                            de::Error::custom(format_args!("field `result`: {e}"))
                        })?)
                    };
                }
                "msg" => task.msg = string(&mut map, "msg")?,
                "started" => task.started = time_field(&mut map, "started")?,
                "ended" => task.ended = time_field(&mut map, "ended")?,
                _ => {
                    let value = map.next_value::<Value>()?;
                    task.extra.insert(key, value);
                }
            }
        }
        if !has_type || task.kind.is_empty() {
            return Err(de::Error::custom(
                "field `type` is missing or empty; every task needs a type, e.g. {\"type\":\"hello\"}",
            ));
        }
        Ok(task)
    }
}
