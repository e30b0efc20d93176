//! The NATS backend (feature `nats`). Its URL form and options are documented in `enabled.rs`.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

#[cfg(feature = "nats")]
mod enabled;

#[cfg(feature = "nats")]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    enabled::connect(url).await
}

#[cfg(not(feature = "nats"))]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(BusError::NotBuilt {
        url: url.redacted(),
        backend: "NATS",
        feature: "nats",
    })
}
