//! The conformance suite on NATS JetStream, against the nats-server at `TASKBUS_TEST_NATS_URL`
//! (default `nats://127.0.0.1:4222`, which scripts/brokers/nats.sh starts). An unreachable server
//! fails the tests; it never skips them. The broker-restart case is in conformance_nats_restart.rs.
#![cfg(feature = "nats")]

mod nats_support;

use nats_support::NatsHarness;

taskbus_bus::conformance_tests!(NatsHarness::shared());
