//! The broker-restart case of the conformance suite on Kafka, in a test binary of its own: each run
//! starts a private tansu (SQLite storage in a temporary directory, a free port), and the case
//! stops and restarts it mid-stream; the shared broker is not touched. tansu's memory storage keeps
//! nothing across a restart, so the shared broker cannot serve this case.
#![cfg(feature = "kafka")]

mod kafka_support;

use kafka_support::KafkaHarness;

taskbus_bus::conformance_tests!(KafkaHarness::private().await; only broker_restart);
