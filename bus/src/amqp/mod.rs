//! The AMQP backend (feature `amqp`). Its URL form and options are documented in `enabled.rs`.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

#[cfg(feature = "amqp")]
mod enabled;

#[cfg(feature = "amqp")]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    enabled::connect(url).await
}

#[cfg(not(feature = "amqp"))]
pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(BusError::NotBuilt {
        url: url.redacted(),
        backend: "AMQP",
        feature: "amqp",
    })
}
