#!/usr/bin/env bash
# On a GPU machine: the issue-7 checks in one run, results under $OUT (or /tmp/labelmill-device).
#  1. nvidia-smi: the card, its memory, the driver.
#  2. labelmill check-device: batch == alone, cached prefix == whole prompt on the GPU, GPU == CPU,
#     for Q8_0/Q4_0 and every weight format, on two generated shapes (exit status = verdict).
#  3. labelmill bench on the LLaMA 2 7B shape (dim 4096, 32 layers, 32 heads, ffn 11008, vocab
#     32000) at Q4_0 and Q8_0, weights quantized and bf16 (bf16-per-batch at the largest batch),
#     batch 1, 8, 32, 128, P = 512, L = 128: one JSON line each in bench.jsonl.
# The binary is .device/labelmill.gz from scripts/device-pack.sh (or LABELMILL_BIN).
# LABELMILL_DEVICE_CHECK_SMALL=1 shrinks every model (a dry run of this script on a CPU build);
# LABELMILL_DEVICE_QUANTS (default "q4_0 q8_0") and LABELMILL_DEVICE_BATCHES (default "1 8 32 128")
# split the sweep over several calls. Generating one 7B-shaped model takes about a minute (1.7 s for
# the 168M weights of the 1024-wide model on a 2-core VM).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/labelmill-device}
mkdir -p "$out"
bin=${LABELMILL_BIN:-}
if [ -z "$bin" ]; then
  bin=/tmp/labelmill-cuda
  gunzip -c .device/labelmill.gz >"$bin" && chmod +x "$bin" || exit 1
fi
. scripts/cuda-env.sh || true
log() { echo "[$(date +%T)] $*" | tee -a "$out/steps.log"; }

log "gpu"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"

small=${LABELMILL_DEVICE_CHECK_SMALL:-}
log "check-device"
status=0
"$bin" check-device >"$out/check.jsonl" 2>>"$out/steps.log" || status=$?
if [ -z "$small" ]; then
  # A wider shape too: kernels tile differently at width 1024 with GQA.
  "$bin" check-device --layers 4 --dim 1024 --heads 16 --kv-heads 4 --ffn 2816 --vocab 32000 \
    >>"$out/check.jsonl" 2>>"$out/steps.log" || status=$?
fi
cat "$out/check.jsonl"
log "check-device exit $status"

if [ -n "$small" ]; then
  shape=(--layers 2 --dim 256 --heads 8 --kv-heads 8 --ffn 512 --vocab 1024)
  batches=(1 8) prefix=64 doc=16
else
  shape=(--layers 32 --dim 4096 --heads 32 --kv-heads 32 --ffn 11008 --vocab 32000 --context 4096)
  read -r -a batches <<<"${LABELMILL_DEVICE_BATCHES:-1 8 32 128}"
  prefix=512 doc=128
fi
read -r -a quants <<<"${LABELMILL_DEVICE_QUANTS:-q4_0 q8_0}"
for quant in "${quants[@]}"; do
  dir=/tmp/labelmill-7b-$quant
  log "tiny-model $quant"
  "$bin" tiny-model --out "$dir" --quant "$quant" "${shape[@]}" >/dev/null 2>>"$out/steps.log" || { log "tiny-model failed"; continue; }
  for weights in quantized bf16 bf16-per-batch; do
    for b in "${batches[@]}"; do
      if [ "$weights" = bf16-per-batch ] && [ "$b" != "${batches[-1]}" ]; then continue; fi
      docs=$((b * 2 > 16 ? b * 2 : 16))
      log "bench $quant $weights batch $b docs $docs"
      "$bin" bench --model "$dir/model.gguf" --weights "$weights" \
        --batch-size "$b" --docs "$docs" --doc-tokens "$doc" --prefix-tokens "$prefix" --runs 3 \
        >>"$out/bench.jsonl" 2>>"$out/steps.log" || log "bench failed"
    done
  done
  rm -rf "$dir"
done
cat "$out/bench.jsonl"
log "done"
exit $status
