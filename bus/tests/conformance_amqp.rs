//! The conformance suite on RabbitMQ with classic queues (the default), every case but the broker
//! restart (in `conformance_amqp_restart.rs`). Needs RabbitMQ: `scripts/brokers/amqp.sh` starts one,
//! or set `TASKBUS_TEST_AMQP_URL`.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used)]

mod amqp_support;

use amqp_support::AmqpHarness;

taskbus_bus::conformance_tests!(AmqpHarness::classic());

/// The harness declares exactly what the backend does.
#[tokio::test]
async fn harness_matches_backend() {
    let bus = amqp_support::connect("").await;
    assert_eq!(bus.capabilities(), amqp_support::amqp_capabilities());
    bus.close().await.unwrap();
}
