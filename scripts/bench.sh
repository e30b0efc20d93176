#!/usr/bin/env bash
# The benchmark: start the brokers the tests use (installing what is missing, as scripts/test.sh
# does), build the `taskbus` command line in release mode with every bus, and run `taskbus bench`
# on every bus. Arguments go to `taskbus bench` (see docs/bench.md, or `taskbus bench --help`).
#
#   ./scripts/bench.sh                          the full table: every bus, every measure
#   ./scripts/bench.sh --buses file,nats        two buses
#
# The report is printed and written to target/bench/taskbus-bench.md and .json unless --markdown
# or --json say otherwise. Benchmarks report; they never pass or fail on a speed.
set -euo pipefail
cd "$(dirname "$0")/.."

for broker in scripts/brokers/*.sh; do
  bash "$broker"
done

cargo build --release --quiet -p taskbus-apps --features nats,amqp,kafka
mkdir -p target/bench
exec target/release/taskbus bench \
  --json target/bench/taskbus-bench.json \
  --markdown target/bench/taskbus-bench.md \
  "$@"
