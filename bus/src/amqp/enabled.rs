//! The AMQP backend: not written yet.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(url.error("the AMQP backend is not written yet"))
}
