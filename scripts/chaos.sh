#!/usr/bin/env bash
# Chaos run on each broker with clients written elsewhere (Python pika and confluent-kafka,
# installed here in a virtual environment): 10,000 documents and planted bad inputs, kill -9 x5 at
# random moments, one broker restart, RabbitMQ's results binding removed for 30 s and restored,
# 1 -> 3 -> 1 workers on Kafka (librdkafka's mock broker, examples/mock_kafka.rs). Prints one JSON report per broker; exits non-zero if a document was
# lost, an unexpected id appeared, or the dead letters are not exactly the planted bad inputs.
#   bash scripts/chaos.sh [amqp|kafka|both] [extra chaos.py arguments]
# LABELMILL_CHAOS_BIN=path uses that binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-both}"; shift || true
venv="${LABELMILL_CHAOS_VENV:-target/chaos-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pika==1.3.2 confluent-kafka==2.6.1
fi
bash scripts/services.sh
bin="${LABELMILL_CHAOS_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --bin labelmill
  bin=target/release/labelmill
fi
# Kafka runs on librdkafka's mock broker in a process of its own (scripts/chaos.py --kafka).
if [ "$which" != amqp ]; then
  cargo build --release --locked --example mock_kafka
fi
model=target/chaos-model
[ -f "$model/model.gguf" ] || "$bin" tiny-model --out "$model"
status=0
for b in amqp kafka; do
  if [ "$which" = both ] || [ "$which" = "$b" ]; then
    "$venv/bin/python" scripts/chaos.py --broker "$b" --labelmill "$bin" --model "$PWD/$model" "$@" || status=1
  fi
done
exit $status
