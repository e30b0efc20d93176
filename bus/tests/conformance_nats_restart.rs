//! The broker-restart case of the conformance suite on NATS JetStream, in a test binary of its own:
//! each run starts a private nats-server (JetStream, file storage in a temporary directory) on a free
//! port, and the case kills and restarts that server mid-stream; the shared server is not touched.
#![cfg(feature = "nats")]

mod nats_support;

use nats_support::NatsHarness;

taskbus_bus::conformance_tests!(NatsHarness::private(); only broker_restart);
