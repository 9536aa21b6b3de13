#!/usr/bin/env bash
# Build the CUDA sidecar (sidecar/, binary loralab-sidecar, feature `cuda`) on a machine
# with no GPU and no CUDA toolkit, for a GPU machine with no Rust toolchain or registries.
#
#   scripts/build-cuda-sidecar.sh            → dist/cuda/loralab-sidecar (stripped)
#
# What it does, in order:
#  1. Downloads NVIDIA's CUDA wheels from PyPI, every one pinned to CUDA 13.0: the target
#     machine's driver (580) speaks CUDA 13.0, and PTX written by a newer nvcc does not
#     load on an older driver. They go to $LORALAB_CACHE/cuda-13.0 (never into git).
#  2. Makes the link folder cargo needs: unversioned .so names for cuBLAS/cuBLASLt/
#     cuRAND/NVRTC/cudart, and a stub libcuda.so.1 (the driver library is never on PyPI;
#     the stub only exports the driver's symbol names, as the toolkit's lib64/stubs does).
#  3. cargo build --release -p loralab-sidecar --features cuda, with CUDA_COMPUTE_CAP=90
#     (H100/H200) and CUDARC_CUDA_VERSION=13000, in its own target dir (target/cuda) so
#     the CPU build is never invalidated.
#  4. Strips the binary and refuses one of 64 MB or more (it must be carried).
#
# At run time the binary finds libcuda.so.1 from the driver and cuBLAS/cuRAND/NVRTC/
# cudart (CUDA 13) on LD_LIBRARY_PATH, e.g. PyTorch's bundled nvidia/cu13/lib
# (scripts/gpu-check.sh sets that up).
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA=13.0
WHEELS=(
  nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary
  nvidia-nvvm==13.0.88          # cicc + libdevice (split out of nvcc's wheel in CUDA 13)
  nvidia-cuda-crt==13.0.88      # crt/ headers nvcc includes
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, libcudart
  nvidia-cuda-cccl==13.0.85     # cub/thrust/libcu++ headers
  nvidia-cublas==13.0.2.14      # cuBLAS + cuBLASLt (link time)
  nvidia-curand==10.4.0.35      # cuRAND of CUDA 13.0 (link time)
  nvidia-cuda-nvrtc==13.0.88    # NVRTC (link time)
)
CACHE="${LORALAB_CACHE:-$HOME/.cache/loralab}/cuda-$CUDA"
ROOT="$CACHE/root/nvidia/cu13"
LINK="$CACHE/link"
OUT=dist/cuda
LIMIT_MB=64

if [ ! -x "$ROOT/bin/nvcc" ] || [ ! -f "$CACHE/.wheels" ] || [ "$(cat "$CACHE/.wheels")" != "${WHEELS[*]}" ]; then
  echo "== CUDA $CUDA wheels from PyPI → $CACHE"
  rm -rf "$CACHE" && mkdir -p "$CACHE/wheels"
  python3 -m pip download --quiet --no-deps --dest "$CACHE/wheels" "${WHEELS[@]}"
  # pip install (not unzip) keeps the executables' mode bits.
  python3 -m pip install --quiet --no-deps --no-index --target "$CACHE/root" "$CACHE"/wheels/*.whl
  rm -rf "$CACHE/wheels"
  echo "${WHEELS[*]}" > "$CACHE/.wheels"
fi
"$ROOT/bin/nvcc" --version | grep -q "release $CUDA" || { echo "error: $ROOT/bin/nvcc is not CUDA $CUDA" >&2; exit 1; }

if [ ! -f "$LINK/libcuda.so" ]; then
  echo "== link folder $LINK"
  mkdir -p "$LINK"
  for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
    ln -sf "$ROOT/lib/lib$lib" "$LINK/lib${lib%%.so*}.so"
  done
  # Stub driver library: every cu* name the CUDA 13.0 header declares (with its _v2/_v3
  # spellings), as empty functions; SONAME libcuda.so.1 so the real driver library is
  # the one loaded at run time.
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$ROOT/include/cuda.h" "$ROOT/include/cudaTypedefs.h" | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$LINK/cuda_stub.c"
  gcc -shared -fPIC -o "$LINK/libcuda.so" -Wl,-soname,libcuda.so.1 "$LINK/cuda_stub.c"
fi

echo "== cargo build (features cuda, sm_90, CUDA $CUDA)"
export PATH="$ROOT/bin:$PATH" CUDA_ROOT="$ROOT" CUDA_HOME="$ROOT" NVCC="$ROOT/bin/nvcc"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="-L native=$LINK -C link-arg=-Wl,--as-needed"
# candle's quantized-matmul kernels are compiled to SASS (~32 MB of fatbin); compressed they
# keep the binary carryable. nvcc reads extra flags from NVCC_APPEND_FLAGS; candle-kernels'
# build script does not watch it, so a change of flags cleans that one crate.
export NVCC_APPEND_FLAGS="--compress-mode=size"
mkdir -p target/cuda
if [ "$(cat target/cuda/.nvcc-flags 2>/dev/null)" != "$NVCC_APPEND_FLAGS" ]; then
  cargo clean --quiet --release --target x86_64-unknown-linux-gnu --target-dir target/cuda -p candle-kernels
  echo "$NVCC_APPEND_FLAGS" > target/cuda/.nvcc-flags
fi
cargo build --release --target x86_64-unknown-linux-gnu --target-dir target/cuda -p loralab-sidecar --features cuda

mkdir -p "$OUT"
strip -o "$OUT/loralab-sidecar" target/cuda/x86_64-unknown-linux-gnu/release/loralab-sidecar
size=$(stat -c %s "$OUT/loralab-sidecar")
echo "== $OUT/loralab-sidecar: $((size / 1048576)) MB ($size bytes), needs:"
readelf -d "$OUT/loralab-sidecar" | grep NEEDED | sed 's/.*\[/  /; s/\]//'
if [ "$size" -ge $((LIMIT_MB * 1048576)) ]; then
  echo "error: the stripped sidecar is $((size / 1048576)) MB, over the $LIMIT_MB MB that can be carried" >&2
  exit 1
fi
