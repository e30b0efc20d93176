//! The broker-restart conformance case on RabbitMQ, in a test binary of its own so that no other case
//! runs while RabbitMQ is down. It restarts RabbitMQ with `rabbitmqctl stop_app` and `start_app`.
#![cfg(feature = "amqp")]

mod amqp_support;

use amqp_support::AmqpHarness;

taskbus_bus::conformance_tests!(AmqpHarness::classic(); only broker_restart);
