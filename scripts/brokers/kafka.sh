#!/usr/bin/env bash
# A Kafka-API broker for the Kafka tests: makes sure one listens on 127.0.0.1:9092, installing and
# starting tansu (a Kafka-compatible broker from crates.io) when none does. Idempotent: run it as often
# as you like.
#
# - TASKBUS_TEST_KAFKA_URL set: the tests use that broker; this script does nothing.
# - something already listens on 127.0.0.1:9092: nothing to do.
# - else: `cargo install tansu@0.6.0 --locked --features dynostore,libsql` when tansu is missing
#   (15 to 25 minutes on two cores; `dynostore` brings the memory storage engine, the default
#   features only have one that discards data; `libsql` brings SQLite storage), then start it on the
#   loopback interface with memory storage and wait until it accepts connections, or fail loudly
#   with the end of its log.
#
# tansu's memory storage keeps nothing across a restart of the broker, so the broker-restart test
# (bus/tests/conformance_kafka_restart.rs) runs a private tansu with SQLite storage instead; a tansu
# built with `--features dynostore` only cannot, and that test then says it is skipped and why.
# Topics are not auto-created: the Kafka bus creates them through the admin API.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ -n "${TASKBUS_TEST_KAFKA_URL:-}" ]; then
  echo "kafka: TASKBUS_TEST_KAFKA_URL is set; using that broker"
  exit 0
fi
if listening 127.0.0.1 9092; then
  exit 0
fi

tansu=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
log=${TMPDIR:-/tmp}/taskbus-tansu.log

if [ ! -x "$tansu" ]; then
  echo "kafka: installing tansu 0.6.0 with cargo (15 to 25 minutes on two cores; once)"
  lock=${TMPDIR:-/tmp}/taskbus-tansu-install.lock
  # One install at a time, should two test runs start together.
  exec 9>"$lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if [ ! -x "$tansu" ]; then
    cargo install tansu@0.6.0 --locked --features dynostore,libsql ||
      { echo "error: cargo install tansu failed; see the output above" >&2; exit 1; }
  fi
  exec 9>&-
fi

echo "kafka: starting tansu on 127.0.0.1:9092 (memory storage; log: $log)"
# setsid: the broker outlives this script and the shell that ran it.
setsid "$tansu" broker \
  --listener-url tcp://127.0.0.1:9092 \
  --advertised-listener-url tcp://127.0.0.1:9092 \
  --storage-engine memory://tansu/ \
  >"$log" 2>&1 </dev/null &
if ! wait_for 127.0.0.1 9092 30 tansu; then
  echo "--- the end of tansu's log ($log):" >&2
  tail -n 30 "$log" >&2 || true
  exit 1
fi
echo "kafka: tansu is ready on 127.0.0.1:9092"
