//! Errors of the bus crate. Each says what was wrong, with what input, and what to do.

use std::path::PathBuf;

/// Anything that went wrong configuring, connecting to or talking to a bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus URL cannot be used.
    #[error("invalid bus URL {url:?}: {reason}")]
    Url {
        /// The URL as given (passwords removed).
        url: String,
        /// What is wrong and how to write it instead.
        reason: String,
    },
    /// The URL names a backend this binary was built without.
    #[error("{url:?} needs {backend} support, which this build does not have: rebuild with `--features {feature}`")]
    NotBuilt {
        /// The URL as given.
        url: String,
        /// The backend's name.
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The broker cannot be reached or refused us.
    #[error("cannot connect to {url} ({reason}): {hint}")]
    Connect {
        /// The URL (passwords removed).
        url: String,
        /// What the client said.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// A topic or group name the backend cannot use.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `topic` or `group`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why it cannot be used and what would work.
        reason: String,
    },
    /// A file or directory of the file bus.
    #[error("{action} {path}: {source}{hint}")]
    Io {
        /// What the bus was doing (`cannot append to`, `cannot lock` …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
        /// A hint with a leading separator, or empty.
        hint: String,
    },
    /// The broker failed an operation.
    #[error("{op} failed: {reason}")]
    Broker {
        /// The operation and its subject (`publish to topic "done"`).
        op: String,
        /// What the broker or client said.
        reason: String,
    },
    /// The operation needs a capability this backend does not have.
    #[error("{backend} cannot {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What it cannot do.
        what: String,
    },
    /// The bus, consumer or delivery was already closed.
    #[error("{0} is closed")]
    Closed(String),
}

impl BusError {
    /// A [`BusError::Url`] with passwords removed from `url`.
    pub fn url(url: &str, reason: impl Into<String>) -> Self {
        BusError::Url {
            url: redact(url),
            reason: reason.into(),
        }
    }

    /// A [`BusError::Broker`].
    pub fn broker(op: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        BusError::Broker {
            op: op.into(),
            reason: reason.to_string(),
        }
    }

    /// A [`BusError::Io`]; a permission error gets a hint on what to check.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "; check the directory's permissions or point the bus at a writable directory"
                    .to_owned()
            }
            _ => String::new(),
        };
        BusError::Io {
            action,
            path: path.into(),
            source,
            hint,
        }
    }
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL the url crate takes (several hosts: kafka://u:p@h1:9092,h2:9092): mask the
        // password between `user:` and `@` by hand.
        Err(_) => redact_by_hand(url),
    }
}

fn redact_by_hand(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!("{}***{}", &url[..start + colon + 1], &url[start + at..])
}

/// Checks a topic or group name: non-empty, at most 200 bytes, and only `A-Z a-z 0-9 . _ -`, so it is
/// valid as a file name, a NATS subject token, an AMQP routing key and a Kafka topic alike.
pub fn check_name(what: &'static str, name: &str) -> Result<(), BusError> {
    let reason = if name.is_empty() {
        Some("it is empty; give a name such as \"hello\"".to_owned())
    } else if name.len() > 200 {
        Some(format!("it is {} bytes long; the limit is 200", name.len()))
    } else if name.starts_with('.') {
        Some("it starts with '.'".to_owned())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("it contains {c:?}; use only letters, digits, '.', '_' and '-'"))
    };
    match reason {
        Some(reason) => Err(BusError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
