#!/usr/bin/env bash
# RabbitMQ for the AMQP tests: makes sure a broker listens on 127.0.0.1:5672, installing and starting one
# when none does. Idempotent: run it as often as you like.
#
# - TASKBUS_TEST_AMQP_URL set: the tests use that broker; this script does nothing.
# - something already listens on 127.0.0.1:5672: nothing to do.
# - else: install rabbitmq-server with apt-get when missing, bind it to the loopback interface only,
#   start it (`rabbitmq-server -detached`, or `rabbitmqctl start_app` when the node runs with its app
#   stopped) and wait until it accepts connections, or fail loudly with the end of its log.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ -n "${TASKBUS_TEST_AMQP_URL:-}" ]; then
  echo "amqp: TASKBUS_TEST_AMQP_URL is set; using that broker"
  exit 0
fi
if listening 127.0.0.1 5672; then
  exit 0
fi

conf_dir=/etc/rabbitmq
env_file=$conf_dir/rabbitmq-env.conf
conf_file=$conf_dir/rabbitmq.conf

# The loopback-only configuration (see shared/reference/brokers.md), written only where nothing says
# otherwise, so a configuration of your own is kept.
configure_loopback() {
  as_root mkdir -p "$conf_dir"
  if ! grep -qs '^listeners\.tcp\.' "$conf_file"; then
    echo 'listeners.tcp.default = 127.0.0.1:5672' | as_root tee -a "$conf_file" >/dev/null
  fi
  if ! grep -qs '^NODENAME=' "$env_file"; then
    printf '%s\n' 'NODENAME=rabbit@localhost' 'NODE_IP_ADDRESS=127.0.0.1' 'ERL_EPMD_ADDRESS=127.0.0.1' |
      as_root tee -a "$env_file" >/dev/null
  fi
}

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  # Installing starts nothing here; the configuration is written after, so dpkg never meets a
  # changed configuration file of its package.
  echo "amqp: installing rabbitmq-server with apt-get"
  apt_install rabbitmq-server
fi
configure_loopback

node=$(sed -n 's/^NODENAME=//p' "$env_file" | tail -n 1)
node=${node:-rabbit@localhost}
pid_file=/var/lib/rabbitmq/mnesia/$node.pid

fail() {
  echo "error: $1" >&2
  echo "--- the end of RabbitMQ's logs (/var/log/rabbitmq):" >&2
  as_root sh -c 'tail -n 30 /var/log/rabbitmq/*.log' >&2 2>/dev/null || true
  exit 1
}

if as_root rabbitmqctl -q -n "$node" ping >/dev/null 2>&1; then
  # The node runs but its app is stopped (say, a restart test was interrupted after `stop_app`).
  echo "amqp: the RabbitMQ node $node runs without listening; starting its app"
  as_root rabbitmqctl -q -n "$node" start_app || fail "rabbitmqctl start_app failed"
else
  echo "amqp: starting RabbitMQ ($node)"
  as_root rabbitmq-server -detached || fail "rabbitmq-server -detached failed"
  # `rabbitmqctl await_startup` right after -detached fails; waiting on the pid file works.
  as_root rabbitmqctl -q -n "$node" wait --timeout 120 "$pid_file" >/dev/null ||
    fail "RabbitMQ did not start within 120 s"
fi
wait_for 127.0.0.1 5672 60 RabbitMQ || fail "RabbitMQ runs but does not listen on 127.0.0.1:5672"
echo "amqp: RabbitMQ is ready on 127.0.0.1:5672"
