#!/usr/bin/env bash
# Builds labelmill with the `cuda` feature on a machine with no CUDA install and no GPU.
#
# CUDA's compiler, headers and libraries come from NVIDIA's PyPI wheels (the `cuda-toolkit`
# metapackage, pinned), installed under target/cuda-<version>/ and laid out as a CUDA_HOME. The
# driver library (libcuda.so.1) ships only with the driver, so a link-time stub is generated from
# the toolkit's own cuda.h; the real driver is loaded on the GPU machine at run time. The CUDA
# major version must match the GPU machine's libraries: the lent H100/H200s have driver 580 and
# PyTorch built for CUDA 13 (libcublas.so.13, libcudart.so.13 under its site-packages), hence 13.
#
# Usage: scripts/build-cuda.sh [extra cargo build args]   builds the release binary
#        scripts/build-cuda.sh clippy                       lints the `cuda` build (-D warnings)
# Env:   CUDA_COMPUTE_CAP   target GPU, 90 = Hopper (H100/H200), 89 = Ada, 80 = A100 (default 90)
#        LABELMILL_CUDA_TOOLKIT  the cuda-toolkit metapackage version (default 13.0.3.0)
#        CARGO_TARGET_DIR   default target/cuda, so the CPU build in target/ is left alone
# Out:   $CARGO_TARGET_DIR/release/labelmill, and the toolkit in target/cuda-<major.minor>/.
# Run it on the GPU machine with scripts/cuda-env.sh (puts the CUDA 13 libraries on the path).
set -euo pipefail
cd "$(dirname "$0")/.."

version=${LABELMILL_CUDA_TOOLKIT:-13.0.3.0}
short=$(echo "$version" | cut -d. -f1-2)
major=${short%%.*}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda}
prefix=$PWD/target/cuda-$short
home=$prefix/site/nvidia/cu$major

if [ ! -x "$home/bin/nvcc" ]; then
  echo "build-cuda: installing CUDA $version (nvcc, nvvm, cccl, cudart, cuBLAS, cuRAND, NVRTC) from PyPI into $prefix"
  command -v python3 >/dev/null || { echo "build-cuda: python3 with pip is needed" >&2; exit 1; }
  command -v gcc >/dev/null || { echo "build-cuda: gcc is needed (nvcc's host compiler)" >&2; exit 1; }
  python3 -m pip install --quiet --no-compile --disable-pip-version-check --target "$prefix/site" \
    "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==$version"
fi

if [ ! -e "$home/lib/stubs/libcuda.so" ]; then
  # The wheels carry only versioned sonames; the linker looks for the plain names.
  for so in "$home"/lib/lib*.so.*; do
    base=$(basename "$so")
    case "$base" in *.alt.*|libnvrtc-builtins*) continue ;; esac
    ln -sf "$base" "$home/lib/${base%%.so.*}.so"
  done

  # Link-time stub of the driver API: every function cuda.h declares (after its _v2/_v3 renaming
  # macros), each returning CUDA_ERROR_UNKNOWN. The soname is the driver's, so the binary loads the
  # real libcuda.so.1 on the GPU machine; the stub itself is never shipped.
  mkdir -p "$home/lib/stubs"
  stub_c=$prefix/libcuda-stub.c
  gcc -E -P -I"$home/include" "$home/include/cuda.h" \
    | grep -oE '\bCUresult\s+(CUDAAPI\s+)?cu[A-Za-z0-9_]+\s*\(' \
    | sed -E 's/.*\b(cu[A-Za-z0-9_]+)\s*\($/\1/' | sort -u \
    | awk '{ printf "int %s(void) { return 999; }\n", $1 }' >"$stub_c"
  [ "$(wc -l <"$stub_c")" -gt 300 ] || { echo "build-cuda: too few driver functions found in cuda.h" >&2; exit 1; }
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so" "$stub_c"
fi

export CUDA_HOME=$home
export PATH=$home/bin:$PATH
# nvcc's own tools and the build scripts that probe the toolkit find its libraries here.
export LD_LIBRARY_PATH=$home/lib:$home/lib/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvcc --version | tail -2
echo "build-cuda: CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR"
if [ "${1:-}" = clippy ]; then
  cargo clippy --release --locked --features cuda --all-targets -- -D warnings
  exit
fi
cargo build --release --locked --features cuda "$@"
echo "build-cuda: built $CARGO_TARGET_DIR/release/labelmill"
