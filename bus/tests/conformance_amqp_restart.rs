//! The broker-restart conformance case on RabbitMQ, in a test binary of its own so that no other case
//! runs while RabbitMQ is down. It restarts RabbitMQ with `rabbitmqctl stop_app` and `start_app`.

#[path = "amqp_support.rs"]
mod support;

use support::AmqpHarness;

taskbus_bus::conformance_tests!(AmqpHarness::classic(); only broker_restart);
