# Shared helpers for the broker scripts (sourced, not run).

# listening HOST PORT: true when something accepts TCP connections there.
listening() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# need_root: apt-get and service starts need root (or sudo).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# apt_install PKG...: installs Debian packages, running `apt-get update` once per script run.
apt_install() {
  if [ -z "${TASKBUS_APT_UPDATED:-}" ]; then
    as_root apt-get update -q >/dev/null
    export TASKBUS_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "$@" >/dev/null
}

# wait_for HOST PORT SECONDS NAME: waits until the port listens, or fails loudly.
wait_for() {
  local host=$1 port=$2 secs=$3 name=$4 i
  for ((i = 0; i < secs * 10; i++)); do
    listening "$host" "$port" && return 0
    sleep 0.1
  done
  echo "error: $name did not start listening on $host:$port within ${secs}s" >&2
  return 1
}
