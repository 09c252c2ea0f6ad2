# Sourced on a GPU machine before running a `cuda` build of labelmill: puts the CUDA 13 user-space
# libraries it links (cudart, cuBLAS, cuBLASLt, cuRAND, NVRTC) on LD_LIBRARY_PATH. They come from a
# CUDA install ($CUDA_HOME, /usr/local/cuda) or, on machines that have only PyTorch, from its
# nvidia-* wheels (site-packages/nvidia/cu13/lib). The driver's libcuda.so.1 is the system's own.
# Usage: . scripts/cuda-env.sh
labelmill_cuda_lib=""
for d in "${CUDA_HOME:-}/lib64" "${CUDA_HOME:-}/lib" /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if [ -e "$d/libcublas.so.13" ]; then labelmill_cuda_lib=$d; break; fi
done
if [ -z "$labelmill_cuda_lib" ]; then
  labelmill_cuda_lib=$(python3 - <<'PY' 2>/dev/null || true
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
for root in nvidia.__path__:
    lib = os.path.join(root, "cu13", "lib")
    if os.path.exists(os.path.join(lib, "libcublas.so.13")):
        print(lib)
        break
PY
)
fi
if [ -z "$labelmill_cuda_lib" ]; then
  echo "cuda-env: no libcublas.so.13 found (CUDA_HOME, /usr/local/cuda, python3's nvidia packages)" >&2
  return 1 2>/dev/null || exit 1
fi
export LD_LIBRARY_PATH=$labelmill_cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "cuda-env: CUDA libraries from $labelmill_cuda_lib"
