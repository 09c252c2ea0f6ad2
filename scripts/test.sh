#!/usr/bin/env bash
# The test command: start (installing if needed) RabbitMQ and tansu, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --all-targets --locked "$@"
