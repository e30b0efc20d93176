//! The conformance suite on Kafka, against the broker at `TASKBUS_TEST_KAFKA_URL` (default
//! `kafka://127.0.0.1:9092`, where scripts/brokers/kafka.sh starts tansu). An unreachable broker
//! fails the tests; it never skips them.
#![cfg(feature = "kafka")]

mod kafka_support;

use kafka_support::KafkaHarness;

taskbus_bus::conformance_tests!(KafkaHarness::shared().await);
