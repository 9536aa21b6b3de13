// A CPU emulation of the slice of CUDA that kernels.cu uses, for tests on machines with no
// GPU. Blocks run one after another; a block's threads run as fibers (ucontext) on one OS
// thread, switching at __syncthreads, so `__shared__` can be a function-local static and
// barrier semantics are exact. A warp shuffle is an exchange through memory between two
// barriers, so it needs every thread of the block to reach it: kernels.cu keeps shuffles in
// uniform control flow (the emulator aborts on a barrier some threads skip). Tensor-core
// fragments (nvcuda::wmma) are emulated too, below.
#pragma once
#define LORALAB_EMULATE 1
#include <ucontext.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;
using std::max;
using std::min;

inline float rsqrtf(float v) { return 1.f / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }

// bf16: the upper half of an f32, rounded to nearest even (as __float2bfloat16).
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 v) {
  uint32_t u = (uint32_t)v.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {(uint16_t)(u >> 16)};
}

namespace emu {
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};
inline ucontext_t scheduler;
inline Fiber* current = nullptr;
inline std::function<void()>* body = nullptr;
inline float exchange[1024];

inline void barrier() { swapcontext(&current->ctx, &scheduler); }

inline void trampoline() {
  (*body)();
  current->done = true;  // returning resumes uc_link (the scheduler)
}

// Run `kernel` over the grid, every block's threads as fibers.
inline void launch(dim3 grid, dim3 block, std::function<void()> kernel) {
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 1024 || block.y != 1 || block.z != 1) {
    std::fprintf(stderr, "emu: unsupported block (%u, %u, %u)\n", block.x, block.y, block.z);
    std::abort();
  }
  gridDim = grid;
  blockDim = block;
  body = &kernel;
  std::vector<Fiber> fibers(n);
  for (unsigned bz = 0; bz < grid.z; bz++)
    for (unsigned by = 0; by < grid.y; by++)
      for (unsigned bx = 0; bx < grid.x; bx++) {
        blockIdx = {bx, by, bz};
        for (auto& f : fibers) {
          f.done = false;
          f.stack.resize(128 * 1024);
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = &scheduler;
          makecontext(&f.ctx, trampoline, 0);
        }
        for (;;) {  // one round: every live thread runs to its next barrier or its end
          unsigned finished = 0, waiting = 0;
          for (unsigned t = 0; t < n; t++) {
            if (fibers[t].done) continue;
            current = &fibers[t];
            threadIdx = {t, 0, 0};
            swapcontext(&scheduler, &fibers[t].ctx);
            (fibers[t].done ? finished : waiting)++;
          }
          if (waiting == 0) break;
          if (finished != 0) {
            std::fprintf(stderr, "emu: %u threads ended while %u wait at a barrier (non-uniform __syncthreads)\n", finished, waiting);
            std::abort();
          }
        }
      }
}
}  // namespace emu

inline void __syncthreads() { emu::barrier(); }
// A warp-level barrier: the emulator's barriers are block-wide, which is stronger.
inline void __syncwarp(unsigned = 0xffffffffu) { emu::barrier(); }

// Tensor-core tiles (m16n16k16): every thread of the warp holds the whole 16×16 tile (the
// hardware spreads it over the warp's registers in a layout the API does not expose, so
// kernels only load, multiply-accumulate, fill and store fragments, never index them), and
// each warp-collective call does the whole operation in every thread. Pointer alignment and
// ldm are checked as the hardware requires them (256-bit pointers; ldm a multiple of 16 bytes).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emu: m16n16k16 only");
  float x[16][16];  // [row][col] of the tile
};

inline void check(const void* p, unsigned ldm, unsigned elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * elem) % 16 != 0) {
    std::fprintf(stderr, "emu: wmma pointer %p not 256-bit aligned or ldm %u not a multiple of 16 bytes\n", p, ldm);
    std::abort();
  }
}
inline float val(float v) { return v; }
inline float val(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  check(p, ldm, sizeof(T));
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.x[r][c] = val(std::is_same<Layout, col_major>::value ? p[c * ldm + r] : p[r * ldm + c]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm, layout_t l) {
  check(p, ldm, 4);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.x[r][c] = l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  check(p, ldm, 4);
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r][c];
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float v) {
  for (auto& row : f.x)
    for (auto& e : row) e = v;
}
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int r = 0; r < 16; r++)
    for (int n = 0; n < 16; n++) {
      float s = c.x[r][n];
      for (int k = 0; k < 16; k++) s += a.x[r][k] * b.x[k][n];
      out[r][n] = s;
    }
  std::memcpy(d.x, out, sizeof out);
}
}  // namespace wmma
}  // namespace nvcuda

// An exchange through memory: every thread of the block must call it (uniform control flow).
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  emu::exchange[threadIdx.x] = v;
  emu::barrier();
  const float r = emu::exchange[threadIdx.x ^ lane_mask];
  emu::barrier();
  return r;
}
