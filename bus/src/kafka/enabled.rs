//! The Kafka backend: not written yet.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(url.error("the Kafka backend is not written yet"))
}
