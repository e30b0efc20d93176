//! The conformance suite on RabbitMQ with quorum queues (`queue_type=quorum`), whose delivery counts
//! and requeues work differently from classic queues'.
#![cfg(feature = "amqp")]

mod amqp_support;

use amqp_support::AmqpHarness;

taskbus_bus::conformance_tests!(AmqpHarness::quorum());
