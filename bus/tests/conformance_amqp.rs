//! The conformance suite on RabbitMQ with classic queues (the default), every case but the broker
//! restart (in `conformance_amqp_restart.rs`). Needs RabbitMQ: `scripts/brokers/amqp.sh` starts one,
//! or set `TASKBUS_TEST_AMQP_URL`.
#![allow(clippy::unwrap_used)]

#[path = "amqp_support.rs"]
mod support;

use support::AmqpHarness;

taskbus_bus::conformance_tests!(AmqpHarness::classic());

/// The harness declares exactly what the backend does.
#[tokio::test]
async fn harness_matches_backend() {
    let bus = support::connect("").await;
    assert_eq!(bus.capabilities(), support::amqp_capabilities());
    bus.close().await.unwrap();
}
