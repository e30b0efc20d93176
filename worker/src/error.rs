//! Errors of the worker crate. Each says what was wrong, with what input, and what to do.

use std::net::SocketAddr;

use taskbus_bus::BusError;

/// Why a [`Launcher`](crate::Launcher) could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Subscribing to the task topic failed.
    #[error("cannot subscribe to topic {topic:?} in group {group:?} on {bus}: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// The consumer group.
        group: String,
        /// The bus URL.
        bus: String,
        /// What the bus said.
        source: BusError,
    },
    /// The bus ended the subscription with an error that will not go away.
    #[error("the subscription to topic {topic:?} failed: {source}")]
    Consume {
        /// The topic.
        topic: String,
        /// What the bus said.
        source: BusError,
    },
    /// The status port could not be opened.
    #[error("cannot serve /healthz, /stats and /metrics on {addr}: {source}; is another process using the port? pick another with http_addr")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The options cannot work together.
    #[error("invalid launcher options: {0}")]
    Options(String),
    /// The bus failed in the test harness.
    #[error(transparent)]
    Bus(#[from] BusError),
}
