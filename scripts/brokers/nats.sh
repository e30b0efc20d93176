#!/usr/bin/env bash
# NATS with JetStream for the NATS tests: makes sure a nats-server listens on 127.0.0.1:4222, installing
# and starting one when none does. Idempotent: run it as often as you like.
#
# - TASKBUS_TEST_NATS_URL set: the tests use that server; this script does nothing.
# - something already listens on 127.0.0.1:4222: nothing to do.
# - else: install nats-server with apt-get when missing, start it in the background with JetStream
#   (`nats-server -a 127.0.0.1 -p 4222 -js -sd DIR`, logging to DIR/nats-server.log) and wait until it
#   accepts connections, or fail loudly with the end of its log.
#
# DIR is TASKBUS_NATS_DIR, else /var/lib/nats-server as root, else ~/.local/state/taskbus/nats.
# Streams persist there across restarts; the tests use names of their own and sweep old ones.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ -n "${TASKBUS_TEST_NATS_URL:-}" ]; then
  echo "nats: TASKBUS_TEST_NATS_URL is set; using that server"
  exit 0
fi
if listening 127.0.0.1 4222; then
  exit 0
fi

if ! command -v nats-server >/dev/null 2>&1; then
  echo "nats: installing nats-server with apt-get"
  apt_install nats-server
fi
if ! command -v nats-server >/dev/null 2>&1; then
  echo "error: nats-server is not on PATH after installing it; install it yourself (apt-get install \
nats-server, or https://github.com/nats-io/nats-server/releases) or set TASKBUS_TEST_NATS_URL" >&2
  exit 1
fi

if [ -n "${TASKBUS_NATS_DIR:-}" ]; then
  dir=$TASKBUS_NATS_DIR
elif [ "$(id -u)" = 0 ]; then
  dir=/var/lib/nats-server
else
  dir=${XDG_STATE_HOME:-$HOME/.local/state}/taskbus/nats
fi
mkdir -p "$dir"
log=$dir/nats-server.log

echo "nats: starting nats-server with JetStream on 127.0.0.1:4222 (store $dir, log $log)"
# setsid: the server outlives this script and the terminal it ran in.
setsid nats-server -a 127.0.0.1 -p 4222 -js -sd "$dir" -l "$log" </dev/null >/dev/null 2>&1 &
pid=$!

if ! wait_for 127.0.0.1 4222 10 nats-server || ! kill -0 "$pid" 2>/dev/null; then
  echo "error: nats-server (pid $pid) did not come up; the end of $log:" >&2
  tail -n 30 "$log" >&2 2>/dev/null || true
  exit 1
fi
for _ in $(seq 50); do
  grep -qs 'Server is ready' "$log" && break
  sleep 0.1
done
if ! grep -qs 'Starting JetStream' "$log"; then
  echo "error: nats-server started without JetStream; the end of $log:" >&2
  tail -n 30 "$log" >&2 || true
  exit 1
fi
echo "nats: ready (pid $pid)"
