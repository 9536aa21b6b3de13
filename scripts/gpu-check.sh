#!/usr/bin/env bash
# The GPU check of the CUDA sidecar, sized for a short GPU window (≤ 5 minutes on one H200).
# Needs on the GPU machine: the carried binary dist/cuda/loralab-sidecar (built here by
# scripts/build-cuda-sidecar.sh), this checkout, python3 with PyTorch's CUDA 13 libraries
# (and transformers + PEFT for parts c and d). No Bun, Rust or registries.
#
#   scripts/gpu-check.sh                 # (a) losses vs CPU (CUDA kernels on and off), (b) loralab
#                                        # tokens/s + peak memory, (c) PyTorch + PEFT side by side, as
#                                        # ratios, (d) PEFT round trip, (e) LoRA with the kernels off
#   scripts/gpu-check.sh --skip c        # arguments go to scripts/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${LORALAB_SIDECAR:-dist/cuda/loralab-sidecar}"
[ -x "$BIN" ] || { echo "error: $BIN not found (hint: build it with scripts/build-cuda-sidecar.sh and carry dist/cuda)" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "error: nvidia-smi failed: no GPU here?" >&2; exit 1; }

# cuBLAS/cuRAND/NVRTC/cudart of CUDA 13 where PyTorch keeps them (pip's nvidia/*/lib), unless the
# caller already set them up; the driver's libcuda.so.1 comes from the system.
if [ -z "${LORALAB_CUDA_LIBS:-}" ]; then
  LORALAB_CUDA_LIBS=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        if any(n in os.path.basename(lib) for n in ("cublas", "curand", "nvrtc", "cudart")):
            dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)
fi
export LD_LIBRARY_PATH="${LORALAB_CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$BIN" | grep 'not found' || true)
[ -z "$missing" ] || { echo "error: $BIN cannot find:"$'\n'"$missing"$'\n'"(hint: set LORALAB_CUDA_LIBS to the folders holding CUDA 13's libcublas.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13)" >&2; exit 1; }

exec timeout 300 python3 scripts/gpu_check.py --sidecar "$BIN" --device cuda "$@"
