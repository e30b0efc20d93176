//! The Kafka backend (feature `kafka`). Its URL form and options are documented in `enabled.rs`.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

#[cfg(feature = "kafka")]
mod consumer;
#[cfg(feature = "kafka")]
mod context;
#[cfg(feature = "kafka")]
mod enabled;
#[cfg(feature = "kafka")]
mod headers;
#[cfg(feature = "kafka")]
mod logs;
#[cfg(feature = "kafka")]
mod offsets;
#[cfg(feature = "kafka")]
mod producer;
#[cfg(feature = "kafka")]
mod pump;
#[cfg(feature = "kafka")]
mod settings;
#[cfg(feature = "kafka")]
mod state;

#[cfg(feature = "kafka")]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    enabled::connect(url).await
}

#[cfg(not(feature = "kafka"))]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(BusError::NotBuilt {
        url: url.redacted(),
        backend: "Kafka",
        feature: "kafka",
    })
}
