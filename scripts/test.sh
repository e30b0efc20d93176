#!/usr/bin/env bash
# The whole test suite: start the brokers the tests need (installing what is missing), then run every
# test of the workspace, with every backend, in one `cargo test` invocation.
#
# Point the tests at brokers of your own instead with TASKBUS_TEST_NATS_URL, TASKBUS_TEST_AMQP_URL and
# TASKBUS_TEST_KAFKA_URL; the scripts then leave those alone.
set -euo pipefail
cd "$(dirname "$0")/.."

for broker in scripts/brokers/*.sh; do
  bash "$broker"
done

cargo fmt --all -- --check
cargo test --workspace --all-features --no-fail-fast "$@"
