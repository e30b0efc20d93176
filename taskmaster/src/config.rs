//! What every engine's configuration file shares: TOML read once, errors that name the file, the line
//! and the key, and parsers for durations, signed offsets and time zones.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use chrono_tz::Tz;
use serde::de::DeserializeOwned;

use crate::ConfigError;

/// A configuration file's text, kept to turn byte spans into lines in error messages.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    name: String,
    text: String,
}

impl ConfigFile {
    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::flag(
                name.clone(),
                format!("cannot read the file ({e}); check the path"),
            )
        })?;
        Ok(ConfigFile { name, text })
    }

    /// A file that was already read; `name` is how errors call it.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        ConfigFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// How errors call the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses the TOML into `T`; errors (syntax, unknown keys, wrong types) carry the line and column.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let (line, column) = e.span().map_or((None, None), |s| {
                let (l, c) = self.line_col(s.start);
                (Some(l), Some(c))
            });
            ConfigError {
                source_name: self.name.clone(),
                line,
                column,
                key: None,
                message: e.message().trim_end().to_owned(),
            }
        })
    }

    /// An error about the value at byte `span` of the file, under `key`.
    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError {
            source_name: self.name.clone(),
            line: Some(line),
            column: Some(column),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// The 1-based line and column of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Parses a duration such as `30s`, `1m30s`, `250ms`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration ({e}); write it like 30s, 5m, 1h30m or 250ms")
    })
}

/// Parses a signed offset such as `-1h`, `+30m`, `90s` or `0`: how far a rule's template time lies
/// from its tick.
pub fn parse_offset(s: &str) -> Result<chrono::Duration, String> {
    let t = s.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if body == "0" {
        return Ok(chrono::Duration::zero());
    }
    let d = humantime::parse_duration(body.trim())
        .map_err(|e| format!("{s:?} is not an offset ({e}); write it like -1h, +30m or -1d"))?;
    let d = chrono::Duration::from_std(d).map_err(|_| format!("offset {s:?} is too large"))?;
    Ok(if negative { -d } else { d })
}

/// Parses an IANA time zone name (`UTC`, `Europe/Paris`, `America/New_York`).
pub fn parse_timezone(s: &str) -> Result<Tz, String> {
    s.trim().parse::<Tz>().map_err(|_| {
        format!("{s:?} is not a time zone; write an IANA name such as UTC, Europe/Paris or America/New_York")
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
    }

    #[test]
    fn toml_errors_name_file_line_and_key() {
        let file = ConfigFile::new("x.toml", "# comment\nname = \"a\"\ncolour = 1\n");
        let err = file.parse::<Sample>().unwrap_err();
        assert_eq!(err.source_name, "x.toml");
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.to_string().starts_with("x.toml:3:1: "), "{err}");
        assert!(err.message.contains("colour"), "{err}");
    }

    #[test]
    fn offsets_are_signed() {
        assert_eq!(parse_offset("-1h").unwrap(), -chrono::Duration::hours(1));
        assert_eq!(parse_offset("+30m").unwrap(), chrono::Duration::minutes(30));
        assert_eq!(parse_offset("0").unwrap(), chrono::Duration::zero());
        assert!(parse_offset("soon").unwrap_err().contains("-1h"));
        assert!(parse_timezone("Mars/Olympus").unwrap_err().contains("IANA"));
        assert_eq!(
            parse_timezone("Europe/Paris").unwrap(),
            chrono_tz::Europe::Paris
        );
    }
}
