#!/usr/bin/env bash
# labelmill's kernels against each other on this CPU: for each model, `labelmill bench` at batch 1
# under each kernel set (LABELMILL_QGEMM_ISA caps detection: portable, avx2, avx-vnni; "best" is
# what detection picks), alternated round by round. Prints "round model kernels doc-tokens/s".
#
#   benches/isa_ab.sh [--rounds N] [--isas "avx-vnni best"] MODEL.gguf...
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
isas="avx2 avx-vnni best"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --isas) isas=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--rounds N] [--isas LIST] MODEL.gguf..." >&2; exit 2; }
bin=${LABELMILL:-target/release/labelmill}
for r in $(seq 1 "$rounds"); do
  for model in "$@"; do
    for isa in $isas; do
      if [ "$isa" = best ]; then unset LABELMILL_QGEMM_ISA; else export LABELMILL_QGEMM_ISA=$isa; fi
      "$bin" bench --model "$model" --docs 16 --doc-tokens 128 --prefix-tokens 256 --batch-size 1 \
        --runs 1 --threads 2 2>/dev/null |
        python3 -c 'import json, sys
d = json.load(sys.stdin)
print(sys.argv[1], sys.argv[2], d["kernels"], round(d["doc_tokens_per_s"]))' "$r" "$model"
    done
  done
done
