#!/usr/bin/env bash
# Here (the build machine): builds the `cuda` binary (scripts/build-cuda.sh), strips it and packs it
# as .device/labelmill.gz, small enough to travel to a GPU machine with no Rust toolchain (the
# stripped binary is ~69 MB, over the device tool's 64 MiB transfer limit; gzip makes it ~20 MB).
# Then on the GPU machine: bash scripts/device-check.sh (with .device carried).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-cuda.sh
bin=${CARGO_TARGET_DIR:-$PWD/target/cuda}/release/labelmill
mkdir -p .device
strip -o .device/labelmill "$bin"
gzip -9 -f .device/labelmill
ls -la .device/labelmill.gz
git rev-parse HEAD >.device/commit
