#!/usr/bin/env bash
# Starts what the tests need, installing it first when missing (Debian):
#   RabbitMQ on 127.0.0.1:5672 (guest/guest), from Debian's packages;
#   tansu, a Kafka-compatible broker, on 127.0.0.1:9092 with sqlite storage, from crates.io;
#   the C toolchain and headers the Kafka client (librdkafka) builds with.
# Idempotent: a service already listening is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

state="${LABELMILL_SERVICES_DIR:-$PWD/target/test-services}"
mkdir -p "$state"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port, name, seconds
  for _ in $(seq "$3"); do
    if listening "$1"; then echo "services: $2 is up on 127.0.0.1:$1"; return 0; fi
    sleep 1
  done
  echo "services: $2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

apt_updated=""
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if [ -z "$apt_updated" ]; then $sudo apt-get update -qq; apt_updated=1; fi
    echo "services: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Build dependencies of rdkafka (librdkafka is compiled from source with TLS and zlib).
apt_install build-essential pkg-config libssl-dev zlib1g-dev

# RabbitMQ.
if ! listening 5672; then
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for 5672 rabbitmq 90
  # The port opens before the broker accepts connections on every vhost.
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi

# tansu (Kafka API). Its in-memory engine mis-reports watermarks; sqlite is right and persistent.
if ! listening 9092; then
  if ! command -v tansu >/dev/null 2>&1; then
    echo "services: installing tansu 0.6.0 from crates.io (about 15 minutes on 2 cores)"
    cargo install tansu --version 0.6.0 --features libsql --locked
  fi
  # tansu resolves the sqlite path against its working directory.
  (cd "$state" && exec nohup tansu broker \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine "sqlite://tansu.db") </dev/null >"$state/tansu.log" 2>&1 &
  wait_for 9092 tansu 60 || { tail -20 "$state/tansu.log" >&2; exit 1; }
fi
