//! `meta`: a URL-query string (`k=v&k2=v2`) of key/value pairs with typed accessors.

use std::fmt;
use std::str::FromStr;

/// The `meta` field of a task: ordered key/value pairs, URL-query encoded on the wire.
///
/// Framework keys live here too (see [`keys`]). Keys keep the order in which they were first set, so a
/// task read and written back keeps its `meta` string.
///
/// ```
/// use taskbus_bus::Meta;
/// let mut meta: Meta = "workflow=f.toml&job=x".parse().unwrap();
/// meta.set("attempt", 2);
/// assert_eq!(meta.get("job"), Some("x"));
/// assert_eq!(meta.get_parsed::<u32>("attempt").unwrap(), Some(2));
/// assert_eq!(meta.to_string(), "workflow=f.toml&job=x&attempt=2");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pairs: Vec<(String, String)>,
    /// The string this meta was parsed from, written back as it was until the meta changes.
    raw: Option<String>,
}

impl PartialEq for Meta {
    fn eq(&self, other: &Self) -> bool {
        self.pairs == other.pairs
    }
}

impl Eq for Meta {}

/// Meta keys the framework reads and writes.
pub mod keys {
    /// How many times the task has been tried before (0 for the first run); set by the retry taskmaster.
    pub const ATTEMPT: &str = "attempt";
    /// The expected duration of the task (`30s`, `5m`): the launcher cancels it after this long.
    pub const TIMEOUT: &str = "timeout";
    /// RFC 3339 time after which the task must not start.
    pub const DEADLINE: &str = "deadline";
    /// Set by a worker that says the task must not be retried (`true`).
    pub const NO_RETRY: &str = "no_retry";
    /// Set by a worker that asks for a retry after a delay (`30s`).
    pub const RETRY_AFTER: &str = "retry_after";
    /// The workflow run a task belongs to.
    pub const RUN: &str = "run";
    /// The workflow file a task belongs to.
    pub const WORKFLOW: &str = "workflow";
    /// The workflow phase a task belongs to.
    pub const PHASE: &str = "phase";
    /// The scheduled time of the cron tick or workflow run (RFC 3339).
    pub const SCHEDULED: &str = "scheduled";
    /// Worker progress (`25%` or a message).
    pub const PROGRESS: &str = "progress";
}

/// A meta value that does not parse as the type asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("meta key {key:?} has value {value:?}, which is not {expected}: {reason}")]
pub struct MetaError {
    /// The key.
    pub key: String,
    /// The value found.
    pub value: String,
    /// The type expected.
    pub expected: &'static str,
    /// Why it did not parse.
    pub reason: String,
}

impl Meta {
    /// An empty meta.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key`, parsed as `T`; `Ok(None)` when the key is missing.
    pub fn get_parsed<T>(&self, key: &str) -> Result<Option<T>, MetaError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        value.parse::<T>().map(Some).map_err(|e| MetaError {
            key: key.to_owned(),
            value: value.to_owned(),
            expected: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
    }

    /// A duration such as `30s`, `1m30s` or `250ms`; `Ok(None)` when the key is missing.
    pub fn get_duration(&self, key: &str) -> Result<Option<std::time::Duration>, MetaError> {
        Ok(self.get_parsed::<humantime::Duration>(key)?.map(Into::into))
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, replacing every earlier value and keeping the key's position.
    #[allow(clippy::needless_pass_by_value)] // by value, so callers pass `2` and `"x"` alike
    pub fn set(&mut self, key: impl Into<String>, value: impl ToString) {
        let key = key.into();
        let value = value.to_string();
        self.raw = None;
        match self.pairs.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.pairs[i].1 = value;
                let mut n = 0;
                self.pairs.retain(|(k, _)| {
                    n += usize::from(*k == key);
                    *k != key || n == 1
                });
            }
            None => self.pairs.push((key, value)),
        }
    }

    /// Adds a value for `key` after any existing ones.
    #[allow(clippy::needless_pass_by_value)] // by value, so callers pass `2` and `"x"` alike
    pub fn append(&mut self, key: impl Into<String>, value: impl ToString) {
        self.raw = None;
        self.pairs.push((key.into(), value.to_string()));
    }

    /// Removes every value of `key`; returns the first one.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let first = self.get(key).map(str::to_owned);
        if first.is_some() {
            self.raw = None;
        }
        self.pairs.retain(|(k, _)| k != key);
        first
    }

    /// Sets every key of `other` here (its values win), keeping keys that only this meta has.
    pub fn merge(&mut self, other: &Meta) {
        for key in other.keys_unique() {
            let values: Vec<&str> = other.get_all(key).collect();
            self.remove(key);
            for v in values {
                self.append(key, v);
            }
        }
    }

    /// The key/value pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn keys_unique(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in &self.pairs {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        keys
    }
}

impl FromStr for Meta {
    type Err = std::convert::Infallible;

    /// Parses a URL-query string; a leading `?` is ignored. Never fails: a malformed escape is kept
    /// as it is, as Go's `url.ParseQuery` callers tend to see it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix('?').unwrap_or(s);
        let pairs = form_urlencoded::parse(s.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Meta {
            pairs,
            raw: Some(s.to_owned()),
        })
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(raw) = &self.raw {
            return f.write_str(raw);
        }
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            ser.append_pair(k, v);
        }
        f.write_str(&ser.finish())
    }
}

impl<K: Into<String>, V: ToString> FromIterator<(K, V)> for Meta {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut meta = Meta::new();
        for (k, v) in iter {
            meta.set(k, v);
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replaces_in_place_and_merge_lets_other_win() {
        let mut m: Meta = "a=1&b=2&a=3".parse().unwrap();
        m.set("a", "x");
        assert_eq!(m.to_string(), "a=x&b=2");
        let other: Meta = "b=9&c=7".parse().unwrap();
        m.merge(&other);
        assert_eq!(m.to_string(), "a=x&b=9&c=7");
    }

    #[test]
    fn typed_errors_name_key_and_value() {
        let m: Meta = "attempt=two".parse().unwrap();
        let err = m.get_parsed::<u32>("attempt").unwrap_err();
        assert!(err.to_string().contains("\"attempt\""), "{err}");
        assert!(err.to_string().contains("\"two\""), "{err}");
        let m: Meta = "timeout=90s".parse().unwrap();
        assert_eq!(
            m.get_duration("timeout").unwrap(),
            Some(std::time::Duration::from_secs(90))
        );
    }

    #[test]
    fn unchanged_meta_is_written_back_byte_for_byte() {
        let m: Meta = "day=2024-01-02T00:00:00Z&p=a/b".parse().unwrap();
        assert_eq!(m.to_string(), "day=2024-01-02T00:00:00Z&p=a/b");
        let mut m = m;
        m.set("x", 1);
        assert_eq!(m.get("day"), Some("2024-01-02T00:00:00Z"));
    }

    #[test]
    fn encodes_reserved_characters() {
        let mut m = Meta::new();
        m.set("path", "s3://b/p?x=1&y=2");
        let s = m.to_string();
        let back: Meta = s.parse().unwrap();
        assert_eq!(back.get("path"), Some("s3://b/p?x=1&y=2"));
    }
}
