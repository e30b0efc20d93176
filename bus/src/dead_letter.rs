//! Dead letters: messages that could not be handled, kept with the reason instead of being dropped.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One entry of the dead-letter topic, as JSON.
///
/// ```json
/// {"topic":"hello","group":"workers","reason":"invalid task: …","delivery_count":1,
///  "at":"2024-01-02T15:04:05Z","payload":"{not json"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The topic the message came from.
    pub topic: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// Why: the decode error, or the redelivery limit reached.
    pub reason: String,
    /// How many times it had been delivered.
    pub delivery_count: u32,
    /// When it was dead-lettered.
    pub at: DateTime<Utc>,
    /// The message as it was (invalid UTF-8 replaced).
    pub payload: String,
}

impl DeadLetter {
    /// The entry as JSON bytes.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an entry of the dead-letter topic.
    pub fn from_json(bytes: &[u8]) -> Result<DeadLetter, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
