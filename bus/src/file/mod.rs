//! `file://DIR` and `stdio:` — not written yet.

use std::sync::Arc;

use crate::config::BusUrl;
use crate::{Backend, BusError};

pub(crate) async fn connect(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(url.error("the file backend is not written yet"))
}

pub(crate) async fn connect_stdio(url: &mut BusUrl) -> Result<Arc<dyn Backend>, BusError> {
    Err(url.error("the stdio backend is not written yet"))
}
