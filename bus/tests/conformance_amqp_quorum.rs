//! The conformance suite on RabbitMQ with quorum queues (`queue_type=quorum`), whose delivery counts
//! and requeues work differently from classic queues'.

#[path = "amqp_support.rs"]
mod support;

use support::AmqpHarness;

taskbus_bus::conformance_tests!(AmqpHarness::quorum());
