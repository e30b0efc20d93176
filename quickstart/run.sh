#!/usr/bin/env bash
# The taskbus quickstart, end to end, with no broker to install:
#   step 1  hello-taskmaster | hello-worker > done.jsonl       (the stdio bus)
#   step 2  two hello-workers share tasks on a file bus, watched with `taskbus tail`
#   step 3  the same binaries on NATS, changing only the URL  (when TASKBUS_QUICKSTART_NATS=nats://…)
#
# It builds the binaries once (cargo build), then runs each step in a fresh directory and checks
# what it printed. quickstart/README.md walks through the same steps by hand.
#
# Environment:
#   TASKBUS_QUICKSTART_NATS  a NATS URL (e.g. nats://127.0.0.1:4222): also run step 3 there
#   TASKBUS_BIN_DIR          use the taskbus, hello-worker and hello-taskmaster binaries in this
#                            directory instead of building them (the test suite does this)
#   TASKBUS_QUICKSTART_DIR   work in this directory instead of a new temporary one
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
nats_url="${TASKBUS_QUICKSTART_NATS:-}"

if [ -n "${TASKBUS_BIN_DIR:-}" ]; then
  bin="$(cd "$TASKBUS_BIN_DIR" && pwd)"
else
  features=()
  if [ -n "$nats_url" ]; then
    features=(--features taskbus-apps/nats,taskbus-quickstart/nats)
  fi
  echo "== building taskbus, hello-worker and hello-taskmaster (once) =="
  (cd "$root" && cargo build --quiet -p taskbus-apps -p taskbus-quickstart "${features[@]}")
  target="${CARGO_TARGET_DIR:-target}"
  case "$target" in /*) ;; *) target="$root/$target" ;; esac
  bin="$target/debug"
fi
for program in taskbus hello-worker hello-taskmaster; do
  if [ ! -x "$bin/$program" ]; then
    echo "error: $bin/$program is missing; build it with: cargo build -p taskbus-apps -p taskbus-quickstart" >&2
    exit 1
  fi
done
export PATH="$bin:$PATH"

work="${TASKBUS_QUICKSTART_DIR:-$(mktemp -d -t taskbus-quickstart.XXXXXX)}"
mkdir -p "$work"
cd "$work"
echo "working in $work"
unset TASKBUS_BUS

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Counts the done tasks of this run each worker did, from `taskbus tail`'s JSON lines on stdin.
share() {
  local lines
  lines="$(cat)"
  for name in "$@"; do
    echo "  $name did $(grep -c "(from $name)" <<<"$lines" || true)"
  done
}

echo
echo "== step 1: hello-taskmaster | hello-worker > done.jsonl  (the stdio bus) =="
hello-taskmaster stdio: 5 | hello-worker stdio: > done.jsonl
cat done.jsonl
complete=$(grep -c '"result":"complete"' done.jsonl || true)
echo "step 1: $complete of 5 tasks complete"
[ "$complete" -eq 5 ]

# Step 2 (and 3): two workers on one bus share the tasks; `taskbus tail` watches the done topic.
two_workers() {
  local url="$1" count="$2" tag="$3"
  export TASKBUS_BUS="$url"
  WORKER_NAME="$tag-1" hello-worker & pids+=($!); local w1=$!
  WORKER_NAME="$tag-2" hello-worker & pids+=($!); local w2=$!
  hello-taskmaster "$url" "$count"
  wait_for_done "$count" "$tag"
  kill -TERM "$w1" "$w2"
  wait "$w1" "$w2" # a worker drains and exits 0 on SIGTERM; anything else fails the script
  pids=()
  unset TASKBUS_BUS
}

echo
echo "== step 2: two workers share the work on a file bus  (file://$work/bus) =="
wait_for_done() { # the file bus is fresh, so every done task on it is from this run
  echo "-- taskbus tail done --follow --count $1"
  taskbus tail done --follow --count "$1"
}
two_workers "file://$work/bus" 20 worker
done_json="$(taskbus --bus "file://$work/bus" tail done --json)"
complete=$(grep -c '"result":"complete"' <<<"$done_json" || true)
echo "step 2: $complete of 20 tasks complete, shared:"
share worker-1 worker-2 <<<"$done_json"
[ "$complete" -eq 20 ]

echo
if [ -z "$nats_url" ]; then
  echo "== step 3: on NATS, only the URL changes =="
  echo "step 3: skipped; run it with a NATS server (nats-server -js) and"
  echo "        TASKBUS_QUICKSTART_NATS=nats://127.0.0.1:4222 ./quickstart/run.sh"
  exit 0
fi
echo "== step 3: the same workers on NATS  ($nats_url) =="
tag="nats-$$-$RANDOM" # the done topic on NATS keeps earlier runs: count this run's tasks only
wait_for_done() {
  # Read the done topic as a consumer group of this run's own, keeping the tasks of this run.
  echo "-- taskbus tail done --json --group quickstart-$2, until $1 of this run's tasks are done"
  : > nats-done.jsonl
  for _ in $(seq 1 120); do
    taskbus --bus "$nats_url" tail done --json --group "quickstart-$2" | grep "(from $2-" >> nats-done.jsonl || true
    if [ "$(wc -l < nats-done.jsonl)" -ge "$1" ]; then
      taskbus --bus stdio: tail < nats-done.jsonl # stdio: renders lines of JSON read from stdin
      return 0
    fi
    sleep 0.5
  done
  echo "error: fewer than $1 done tasks from $2 on $nats_url after 60s" >&2
  return 1
}
two_workers "$nats_url" 20 "$tag"
done_json="$(cat nats-done.jsonl)"
complete=$(grep -c '"result":"complete"' <<<"$done_json" || true)
echo "step 3: $complete of 20 tasks complete, shared:"
share "$tag-1" "$tag-2" <<<"$done_json"
[ "$complete" -ge 20 ]
