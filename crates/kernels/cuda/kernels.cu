// loralab's CUDA kernels: the ops candle has no GPU kernel (or no backward) for.
//
//   rms_norm_{fwd,bwd}_T        RMSNorm over the last dim; the backward gives dx
//   rope_T                      rotary embedding; sign = -1 is its backward (inverse rotation)
//   dropout_T                   x·mask with the engine's counter-based RNG (crates/core/src/rng.rs),
//                               so the GPU draws the CPU's masks; the backward is the same call
//   swiglu_{fwd,bwd}_T          silu(g)·u and its two gradients, keeping only g and u
//   opt_{moment,adam,lion}      the optimizers' in-place passes over f32 state (maths in f64,
//                               as the CPU's fused passes: the same bits)
//   nll_{fwd,grad}_T, sum_f32   masked next-token cross-entropy and its gradient,
//                               never materialising the (n, vocab) log-softmax
//   attn_fwd_T_HD               causal flash attention with grouped-query heads: O and the
//                               row log-sum-exp, no (t, t) scores in memory
//   attn_bwd_{delta,kv,q}_T_HD  its backward: D = rowsum(dO∘O), then dK/dV (one block per
//                               key block, summing the kv head's query heads, no atomics)
//                               and dQ (one block per query block), recomputing P
//   attn_{fwd,bwd_kv,bwd_q}_tc_bf16_HD
//                               the same three on tensor cores (bf16 tiles, f32 accumulators)
//
// T is f32 or bf16 (suffix f32 / bf16); every kernel computes in f32. Tensors are
// contiguous, row-major. One source serves two builds: nvcc --fatbin for the GPU (loaded by
// crates/core/src/cuda.rs), and g++ with emu.h, which runs each block's threads as fibers
// on the CPU, so `cargo test -p loralab-kernels` checks the kernels without a GPU.
// Kernels keep control flow uniform around __syncthreads and shuffles (the emulator
// checks it).

#ifndef LORALAB_EMULATE
#include <cuda_bf16.h>
#include <math_constants.h>
#include <mma.h>
#define LL_INF CUDART_INF_F
// 16 aligned bytes at once
__device__ __forceinline__ void copy16(void* d, const void* s) { *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s); }
__device__ __forceinline__ void zero16(void* d) { *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0); }
#else
#define LL_INF INFINITY
inline void align16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "emu: 16-byte access at %p is misaligned\n", p);
    std::abort();
  }
}
inline void copy16(void* d, const void* s) { align16(d), align16(s), std::memcpy(d, s, 16); }
inline void zero16(void* d) { align16(d), std::memset(d, 0, 16); }
#endif

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(bf16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T st(float v);
template <> __device__ __forceinline__ float st<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 st<bf16>(float v) { return __float2bfloat16(v); }

// Sum over aligned groups of G lanes (G a power of two ≤ 32); every lane gets the sum.
template <int G> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = G / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum or max (blockDim.x a multiple of 32); every thread gets the result.
template <bool MAX> __device__ float block_reduce(float v) {
  __shared__ float part[32];
  v = MAX ? warp_max(v) : group_sum<32>(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[w] = v;
  __syncthreads();
  float r = part[0];
  for (int i = 1; i < nw; i++) r = MAX ? fmaxf(r, part[i]) : r + part[i];
  return r;
}

// ------------------------------------------------------------------ RMSNorm

// y = x · rsqrt(mean(x²) + eps) · w; one block per row of d.
template <typename T>
__device__ void rms_norm_fwd(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, int d, float eps) {
  const T* xr = x + (size_t)blockIdx.x * d;
  T* yr = y + (size_t)blockIdx.x * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) { float a = ld(xr[i]); ss += a * a; }
  const float r = rsqrtf(block_reduce<false>(ss) / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = st<T>(ld(xr[i]) * r * ld(w[i]));
}

// dx = r·(g∘w) − x·r³·mean((g∘w)∘x) with r = rsqrt(mean(x²) + eps); one block per row.
template <typename T>
__device__ void rms_norm_bwd(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g,
                             T* __restrict__ dx, int d, float eps) {
  const size_t off = (size_t)blockIdx.x * d;
  float ss = 0.f, dot = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float a = ld(x[off + i]);
    ss += a * a;
    dot += ld(g[off + i]) * ld(w[i]) * a;
  }
  ss = block_reduce<false>(ss);
  dot = block_reduce<false>(dot);
  const float r = rsqrtf(ss / d + eps), c = r * r * r * dot / d;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    dx[off + i] = st<T>(r * ld(g[off + i]) * ld(w[i]) - ld(x[off + i]) * c);
}

// ------------------------------------------------------------------ rotary embedding

// x: (rows, hd) with row r at position r mod t; cos, sin: (t, hd) f32. One thread per
// rotated pair (i, i + hd/2). sign = -1 applies the inverse rotation (the backward).
template <typename T>
__device__ void rope(const T* __restrict__ x, const float* __restrict__ cos, const float* __restrict__ sin,
                     T* __restrict__ y, int rows, int t, int hd, float sign) {
  const int half = hd / 2;
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)rows * half) return;
  const size_t row = idx / half;
  const int i = (int)(idx % half), pos = (int)(row % t);
  const float a = ld(x[row * hd + i]), b = ld(x[row * hd + i + half]);
  const float* c = cos + (size_t)pos * hd;
  const float* s = sin + (size_t)pos * hd;
  y[row * hd + i] = st<T>(a * c[i] - b * sign * s[i]);
  y[row * hd + i + half] = st<T>(b * c[i + half] + a * sign * s[i + half]);
}

// ------------------------------------------------------------------ dropout

// splitmix64's finaliser: Rng::bits_at(i) = mix(state + (i + 1)·golden).
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// y_e = x_e · (lane < threshold ? 0 : keep) where draw e/4 gives four 16-bit lanes, lane e%4
// (ops.rs Dropout). One thread per draw.
template <typename T>
__device__ void dropout(const T* __restrict__ x, T* __restrict__ y, unsigned long long n, unsigned long long state,
                        unsigned threshold, float keep) {
  const unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (q * 4 >= n) return;
  const unsigned long long bits = mix64(state + (q + 1) * 0x9E3779B97F4A7C15ull);
  for (int lane = 0; lane < 4; lane++) {
    const unsigned long long e = q * 4 + lane;
    if (e >= n) break;
    const float m = ((bits >> (16 * lane)) & 0xFFFFull) < threshold ? 0.f : keep;
    y[e] = st<T>(ld(x[e]) * m);
  }
}

// ------------------------------------------------------------------ SwiGLU

// y = silu(g)·u, one thread per element.
template <typename T>
__device__ void swiglu_fwd(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, unsigned long long n) {
  const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const float a = ld(g[e]);
  y[e] = st<T>(a / (1.f + __expf(-a)) * ld(u[e]));
}

// dg = dy·u·σ(g)·(1 + g·(1 − σ(g))), du = dy·silu(g).
template <typename T>
__device__ void swiglu_bwd(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ dy, T* __restrict__ dg,
                           T* __restrict__ du, unsigned long long n) {
  const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const float a = ld(g[e]), sig = 1.f / (1.f + __expf(-a)), d = ld(dy[e]);
  du[e] = st<T>(d * a * sig);
  dg[e] = st<T>(d * ld(u[e]) * sig * (1.f + a * (1.f - sig)));
}

// ------------------------------------------------------------------ optimizers
// In place, one thread per element, f32 storage, f64 maths (crates/core/src/optim.rs's passes).
// Every product and sum is rounded on its own, in the Rust expressions' order: nvcc would
// otherwise fuse a·b + c into one FMA, whose single rounding differs from the CPU's (and can
// flip LionW's sign(β1·m + (1−β1)·g) where the two terms cancel).
#ifndef LORALAB_EMULATE
#define MUL(a, b) __dmul_rn(a, b)
#define ADD(a, b) __dadd_rn(a, b)
#define SUB(a, b) __dsub_rn(a, b)
#else
#define MUL(a, b) ((a) * (b))
#define ADD(a, b) ((a) + (b))
#define SUB(a, b) ((a) - (b))
#endif

// m = β·m + (1−β)·(g or g²)
extern "C" __global__ void opt_moment(float* __restrict__ m, const float* __restrict__ g, unsigned long long n, double beta, int square) {
  const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const double gv = g[e];
  m[e] = (float)ADD(MUL(beta, (double)m[e]), MUL(SUB(1.0, beta), square ? MUL(gv, gv) : gv));
}

// p = p·decay − lr·(m/bc1)/(√(v/bc2) + eps)
extern "C" __global__ void opt_adam(float* __restrict__ p, const float* __restrict__ m, const float* __restrict__ v, unsigned long long n,
                                    double decay, double lr, double bc1, double bc2, double eps) {
  const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  p[e] = (float)SUB(MUL((double)p[e], decay), MUL(lr, (double)m[e] / bc1) / ADD(sqrt((double)v[e] / bc2), eps));
}

// p = p·decay − lr·sign(β1·m + (1−β1)·g)
extern "C" __global__ void opt_lion(float* __restrict__ p, const float* __restrict__ m, const float* __restrict__ g, unsigned long long n,
                                    double decay, double lr, double b1) {
  const unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= n) return;
  const double c = ADD(MUL(b1, (double)m[e]), MUL(SUB(1.0, b1), (double)g[e]));
  p[e] = (float)SUB(MUL((double)p[e], decay), MUL(lr, c > 0.0 ? 1.0 : c < 0.0 ? -1.0 : 0.0));
}
#undef MUL
#undef ADD
#undef SUB

// ------------------------------------------------------------------ masked cross-entropy

// Row max and Σ exp(x − max) of one row of v logits, block-wide.
template <typename T> __device__ void row_lse(const T* xr, int v, float& m, float& s) {
  float lm = -LL_INF;
  for (int i = threadIdx.x; i < v; i += blockDim.x) lm = fmaxf(lm, ld(xr[i]));
  m = block_reduce<true>(lm);
  float ls = 0.f;
  for (int i = threadIdx.x; i < v; i += blockDim.x) ls += __expf(ld(xr[i]) - m);
  s = block_reduce<false>(ls);
}

// loss_i = w_i·(logsumexp(x_i) − x_i[target_i]); rows with w_i = 0 are skipped. One block per row.
template <typename T>
__device__ void nll_fwd(const T* __restrict__ x, const unsigned* __restrict__ target, const float* __restrict__ weight,
                        float* __restrict__ loss, int v) {
  const int row = blockIdx.x;
  const float w = weight[row];
  if (w == 0.f) {  // uniform over the block
    if (threadIdx.x == 0) loss[row] = 0.f;
    return;
  }
  const T* xr = x + (size_t)row * v;
  float m, s;
  row_lse(xr, v, m, s);
  if (threadIdx.x == 0) loss[row] = w * (m + logf(s) - ld(xr[target[row]]));
}

// dx_i = w_i·(softmax(x_i) − onehot(target_i)), w already multiplied by the upstream gradient.
template <typename T>
__device__ void nll_grad(const T* __restrict__ x, const unsigned* __restrict__ target, const float* __restrict__ weight,
                         T* __restrict__ dx, int v) {
  const int row = blockIdx.x;
  const float w = weight[row];
  const T* xr = x + (size_t)row * v;
  T* dr = dx + (size_t)row * v;
  if (w == 0.f) {
    for (int i = threadIdx.x; i < v; i += blockDim.x) dr[i] = st<T>(0.f);
    return;
  }
  float m, s;
  row_lse(xr, v, m, s);
  const float lse = m + logf(s);
  const int tg = (int)target[row];
  for (int i = threadIdx.x; i < v; i += blockDim.x) dr[i] = st<T>(w * (__expf(ld(xr[i]) - lse) - (i == tg ? 1.f : 0.f)));
}

// out[0] = Σ a (one block; deterministic).
extern "C" __global__ void __launch_bounds__(1024) sum_f32(const float* __restrict__ a, float* __restrict__ out, int n) {
  float s = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += a[i];
  s = block_reduce<false>(s);
  if (threadIdx.x == 0) out[0] = s;
}

// ------------------------------------------------------------------ causal flash attention
//
// q, o, dq: (b, nh, t, HD); k, v, dk, dv: (b, kvh, t, HD); query head h reads kv head
// h / (nh / kvh). lse, delta: (b, nh, t) f32; lse is in base 2 of the scaled scores
// (log2 Σ_j 2^(s_ij·scale·log2 e)), delta = rowsum(dO ∘ O).
// A query (or key) row is served by G = HD/32 adjacent threads; thread g of the group
// holds dims g, g+G, g+2G, … (32 of them) in registers, so the group's lanes read
// adjacent shared-memory words (no bank conflicts); dot products are summed over the G lanes.

#define ATTN_THREADS 128
#define ATTN_BC 32  // keys (forward, dQ) or queries (dK/dV) per shared-memory tile

// Rows r0 … r0+BC−1 of two (t, HD) matrices at `off` into shared tiles, in f32; rows past t
// read as zeros. Called by every thread of the block, between barriers.
template <typename T, int HD>
__device__ __forceinline__ void load_tiles(float (*a)[HD], float (*b)[HD], const T* __restrict__ x, const T* __restrict__ y,
                                           size_t off, int r0, int t) {
  for (int e = threadIdx.x; e < ATTN_BC * HD; e += ATTN_THREADS) {
    const int rr = e / HD, dd = e % HD, r = r0 + rr;
    a[rr][dd] = r < t ? ld(x[off + (size_t)r * HD + dd]) : 0.f;
    b[rr][dd] = r < t ? ld(y[off + (size_t)r * HD + dd]) : 0.f;
  }
}

template <typename T, int HD>
__device__ void attn_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                         float* __restrict__ lse, int nh, int kvh, int t, float scale) {
  constexpr int G = HD / 32, S = 32, BR = ATTN_THREADS / G, BC = ATTN_BC;
  __shared__ float ks[BC][HD];
  __shared__ float vs[BC][HD];
  const int r = threadIdx.x / G, g = threadIdx.x % G, h = blockIdx.y, b = blockIdx.z;
  const int i = blockIdx.x * BR + r;
  const bool live = i < t;
  const size_t qoff = ((size_t)(b * nh + h) * t) * HD, koff = ((size_t)(b * kvh + h / (nh / kvh)) * t) * HD;
  const float c = scale * 1.44269504088896340736f;  // scores in base 2
  float qr[S], acc[S];
#pragma unroll
  for (int s = 0; s < S; s++) {
    qr[s] = live ? ld(q[qoff + (size_t)i * HD + s * G + g]) * c : 0.f;
    acc[s] = 0.f;
  }
  float m = -LL_INF, l = 0.f;
  const int end = min(t, (int)(blockIdx.x + 1) * BR);  // the block's last query sees keys < end
  for (int j0 = 0; j0 < end; j0 += BC) {
    __syncthreads();
    load_tiles<T, HD>(ks, vs, k, v, koff, j0, t);
    __syncthreads();
    float sc[BC];
    float mt = m;
#pragma unroll
    for (int jj = 0; jj < BC; jj++) {
      float p = 0.f;
#pragma unroll
      for (int s = 0; s < S; s++) p += qr[s] * ks[jj][s * G + g];
      p = group_sum<G>(p);
      sc[jj] = (live && j0 + jj <= i) ? p : -LL_INF;
      mt = fmaxf(mt, sc[jj]);
    }
    if (mt == -LL_INF) continue;  // nothing visible yet (rows past t); no barrier follows
    const float alpha = exp2f(m - mt);  // m = -inf on the first tile: alpha = 0
    l *= alpha;
#pragma unroll
    for (int s = 0; s < S; s++) acc[s] *= alpha;
#pragma unroll
    for (int jj = 0; jj < BC; jj++) {
      const float p = exp2f(sc[jj] - mt);
      l += p;
#pragma unroll
      for (int s = 0; s < S; s++) acc[s] += p * vs[jj][s * G + g];
    }
    m = mt;
  }
  if (!live) return;
  const float inv = 1.f / l;
#pragma unroll
  for (int s = 0; s < S; s++) o[qoff + (size_t)i * HD + s * G + g] = st<T>(acc[s] * inv);
  if (g == 0) lse[(size_t)(b * nh + h) * t + i] = m + log2f(l);
}

// delta = rowsum(dO ∘ O) over (b·nh·t) rows; one thread per row.
template <typename T, int HD>
__device__ void attn_bwd_delta(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta, int rows) {
  const size_t row = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= (size_t)rows) return;
  float s = 0.f;
  for (int d = 0; d < HD; d++) s += ld(o[row * HD + d]) * ld(dout[row * HD + d]);
  delta[row] = s;
}

// dK, dV for one block of BR keys of one kv head, over every query i ≥ key and every
// query head sharing the kv head: dV_j = Σ_i P_ij dO_i, dK_j = scale·Σ_i dS_ij q_i with
// dS_ij = P_ij (dO_i·v_j − delta_i).
template <typename T, int HD>
__device__ void attn_bwd_kv(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                            T* __restrict__ dk, T* __restrict__ dv, int nh, int kvh, int t, float scale) {
  constexpr int G = HD / 32, S = 32, BR = ATTN_THREADS / G, BQ = ATTN_BC;
  __shared__ float qs[BQ][HD];
  __shared__ float dos[BQ][HD];
  __shared__ float ls[BQ], ds[BQ];
  const int r = threadIdx.x / G, g = threadIdx.x % G, kh = blockIdx.y, b = blockIdx.z;
  const int j = blockIdx.x * BR + r, rep = nh / kvh;
  const bool live = j < t;
  const size_t koff = ((size_t)(b * kvh + kh) * t) * HD;
  const float c = scale * 1.44269504088896340736f;
  float kr[S], vr[S], dkr[S], dvr[S];
#pragma unroll
  for (int s = 0; s < S; s++) {
    kr[s] = live ? ld(k[koff + (size_t)j * HD + s * G + g]) : 0.f;
    vr[s] = live ? ld(v[koff + (size_t)j * HD + s * G + g]) : 0.f;
    dkr[s] = 0.f;
    dvr[s] = 0.f;
  }
  const int start = (blockIdx.x * BR) / BQ * BQ;  // the first query that sees any of these keys
  for (int hh = 0; hh < rep; hh++) {
    const int h = kh * rep + hh;
    const size_t qoff = ((size_t)(b * nh + h) * t) * HD, roff = (size_t)(b * nh + h) * t;
    for (int i0 = start; i0 < t; i0 += BQ) {
      __syncthreads();
      load_tiles<T, HD>(qs, dos, q, dout, qoff, i0, t);
      for (int ii = threadIdx.x; ii < BQ; ii += ATTN_THREADS) {
        ls[ii] = i0 + ii < t ? lse[roff + i0 + ii] : 0.f;
        ds[ii] = i0 + ii < t ? delta[roff + i0 + ii] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int ii = 0; ii < BQ; ii++) {
        float sc = 0.f, dp = 0.f;
#pragma unroll
        for (int s = 0; s < S; s++) {
          sc += qs[ii][s * G + g] * kr[s];
          dp += dos[ii][s * G + g] * vr[s];
        }
        sc = group_sum<G>(sc);
        dp = group_sum<G>(dp);
        const int i = i0 + ii;
        const float p = (live && i < t && j <= i) ? exp2f(sc * c - ls[ii]) : 0.f;
        const float dsij = p * (dp - ds[ii]);
#pragma unroll
        for (int s = 0; s < S; s++) {
          dvr[s] += p * dos[ii][s * G + g];
          dkr[s] += dsij * qs[ii][s * G + g];
        }
      }
    }
  }
  if (!live) return;
#pragma unroll
  for (int s = 0; s < S; s++) {
    dk[koff + (size_t)j * HD + s * G + g] = st<T>(dkr[s] * scale);
    dv[koff + (size_t)j * HD + s * G + g] = st<T>(dvr[s]);
  }
}

// dQ for one block of BR queries of one head: dQ_i = scale·Σ_{j ≤ i} dS_ij k_j.
template <typename T, int HD>
__device__ void attn_bwd_q(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                           const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                           T* __restrict__ dq, int nh, int kvh, int t, float scale) {
  constexpr int G = HD / 32, S = 32, BR = ATTN_THREADS / G, BC = ATTN_BC;
  __shared__ float ks[BC][HD];
  __shared__ float vs[BC][HD];
  const int r = threadIdx.x / G, g = threadIdx.x % G, h = blockIdx.y, b = blockIdx.z;
  const int i = blockIdx.x * BR + r;
  const bool live = i < t;
  const size_t qoff = ((size_t)(b * nh + h) * t) * HD, koff = ((size_t)(b * kvh + h / (nh / kvh)) * t) * HD;
  const size_t roff = (size_t)(b * nh + h) * t;
  const float c = scale * 1.44269504088896340736f;
  float qr[S], dor[S], dqr[S];
#pragma unroll
  for (int s = 0; s < S; s++) {
    qr[s] = live ? ld(q[qoff + (size_t)i * HD + s * G + g]) : 0.f;
    dor[s] = live ? ld(dout[qoff + (size_t)i * HD + s * G + g]) : 0.f;
    dqr[s] = 0.f;
  }
  const float li = live ? lse[roff + i] : 0.f, di = live ? delta[roff + i] : 0.f;
  const int end = min(t, (int)(blockIdx.x + 1) * BR);
  for (int j0 = 0; j0 < end; j0 += BC) {
    __syncthreads();
    load_tiles<T, HD>(ks, vs, k, v, koff, j0, t);
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < BC; jj++) {
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int s = 0; s < S; s++) {
        sc += qr[s] * ks[jj][s * G + g];
        dp += dor[s] * vs[jj][s * G + g];
      }
      sc = group_sum<G>(sc);
      dp = group_sum<G>(dp);
      const float p = (live && j0 + jj <= i) ? exp2f(sc * c - li) : 0.f;
      const float dsij = p * (dp - di);
#pragma unroll
      for (int s = 0; s < S; s++) dqr[s] += dsij * ks[jj][s * G + g];
    }
  }
  if (!live) return;
#pragma unroll
  for (int s = 0; s < S; s++) dq[qoff + (size_t)i * HD + s * G + g] = st<T>(dqr[s] * scale);
}

// ------------------------------------------------------------------ tensor-core attention (bf16)
//
// The same maths as above with the tile products on tensor cores (wmma m16n16k16: bf16
// operands, f32 accumulators). A block is 4 warps; a warp owns 16 query rows (forward, dQ)
// or 16 keys (dK/dV), whose operands it keeps in fragments and whose accumulators it never
// rescales: the forward makes two passes over the keys (the exact row log-sum-exp first, then
// O = Σ exp2(s·c − lse)·v), so every accumulator is a plain sum. Elementwise work (mask,
// exp, dS) goes through each warp's shared tiles, a lane pair per row, 16 columns each.
// Shared tiles have a row stride of HD + 8 (fragments stay 256-bit aligned, rows shift banks).

namespace wm = nvcuda::wmma;
#define TC_ROWS 64  // query rows (forward, dQ) or keys (dK/dV) per block: 4 warps × 16
#define TC_TILE 32  // keys (forward, dQ) or queries (dK/dV) per step
typedef wm::fragment<wm::matrix_a, 16, 16, 16, bf16, wm::row_major> FragA;
typedef wm::fragment<wm::matrix_b, 16, 16, 16, bf16, wm::row_major> FragB;
typedef wm::fragment<wm::matrix_b, 16, 16, 16, bf16, wm::col_major> FragBt;  // a row-major (n, k) tile read as its transpose
typedef wm::fragment<wm::accumulator, 16, 16, 16, float> FragC;

// Rows r0 … r0+R−1 of a (t, HD) bf16 matrix at `off` into a shared tile; zeros past t.
template <int HD, int R>
__device__ __forceinline__ void stage(bf16 (*dst)[HD + 8], const bf16* __restrict__ src, size_t off, int r0, int t) {
  for (int e = threadIdx.x; e < R * HD / 8; e += 128) {
    const int rr = e / (HD / 8), c8 = (e % (HD / 8)) * 8, r = r0 + rr;
    if (r < t) copy16(&dst[rr][c8], &src[off + (size_t)r * HD + c8]);
    else zero16(&dst[rr][c8]);
  }
}

// The block's TC_ROWS rows from r0 of a (t, HD) matrix at `off`, staged through `xs`, into each
// warp's fragments for its 16 rows. Every thread of the block calls it; xs is free again after.
template <int HD>
__device__ __forceinline__ void load_rows(FragA* a, bf16 (*xs)[HD + 8], const bf16* __restrict__ src, size_t off, int r0, int t) {
  __syncthreads();  // xs may still be in use
  stage<HD, TC_ROWS>(xs, src, off, r0, t);
  __syncthreads();
  const int w = threadIdx.x / 32;
#pragma unroll
  for (int kk = 0; kk < HD / 16; kk++) wm::load_matrix_sync(a[kk], &xs[w * 16][kk * 16], HD + 8);
}

// out (16 × TC_TILE, f32) = A (16 × HD, fragments) · Bᵀ with B the tile's TC_TILE rows.
template <int HD>
__device__ __forceinline__ void tile_scores(const FragA* a, bf16 (*b)[HD + 8], float (*out)[TC_TILE]) {
#pragma unroll
  for (int nb = 0; nb < TC_TILE / 16; nb++) {
    FragC acc;
    wm::fill_fragment(acc, 0.f);
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
      FragBt bt;
      wm::load_matrix_sync(bt, &b[nb * 16][kk * 16], HD + 8);
      wm::mma_sync(acc, a[kk], bt, acc);
    }
    wm::store_matrix_sync(&out[0][nb * 16], acc, TC_TILE, wm::mem_row_major);
  }
}

// acc (16 × HD) += P (16 × TC_TILE, bf16, shared) · B (TC_TILE × HD rows of a tile).
template <int HD>
__device__ __forceinline__ void tile_accumulate(FragC* acc, bf16 (*p)[TC_TILE], bf16 (*b)[HD + 8]) {
#pragma unroll
  for (int kc = 0; kc < TC_TILE / 16; kc++) {
    FragA pa;
    wm::load_matrix_sync(pa, &p[0][kc * 16], TC_TILE);
#pragma unroll
    for (int nb = 0; nb < HD / 16; nb++) {
      FragB bb;
      wm::load_matrix_sync(bb, &b[kc * 16][nb * 16], HD + 8);
      wm::mma_sync(acc[nb], pa, bb, acc[nb]);
    }
  }
}

// Row `row` of a warp's 16 × HD accumulators, times `mul`, to dst[row·HD …] in bf16, 16
// columns at a time through the warp's f32 scratch tile. Every lane of the warp calls it.
template <int HD>
__device__ __forceinline__ void tile_write(const FragC* acc, float (*scratch)[TC_TILE], bf16* __restrict__ dst, bool live, float mul) {
  const int r = (threadIdx.x % 32) / 2, half = threadIdx.x % 2;
#pragma unroll
  for (int nb = 0; nb < HD / 16; nb++) {
    __syncwarp();
    wm::store_matrix_sync(&scratch[0][0], acc[nb], TC_TILE, wm::mem_row_major);
    __syncwarp();
    if (live)
      for (int cc = 0; cc < 8; cc++) dst[nb * 16 + half * 8 + cc] = st<bf16>(scratch[r][half * 8 + cc] * mul);
  }
}

template <int HD>
__device__ void attn_fwd_tc(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, bf16* __restrict__ o,
                            float* __restrict__ lse, int nh, int kvh, int t, float scale) {
  constexpr int KB = HD / 16;
  __shared__ __align__(32) bf16 qs[TC_ROWS][HD + 8];
  __shared__ __align__(32) bf16 ks[TC_TILE][HD + 8];
  __shared__ __align__(32) bf16 vs[TC_TILE][HD + 8];
  __shared__ __align__(32) float sw[4][16][TC_TILE];
  __shared__ __align__(32) bf16 pw[4][16][TC_TILE];
  const int w = threadIdx.x / 32, r = (threadIdx.x % 32) / 2, half = threadIdx.x % 2;
  const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * TC_ROWS, i = q0 + w * 16 + r;
  const size_t qoff = ((size_t)(b * nh + h) * t) * HD, koff = ((size_t)(b * kvh + h / (nh / kvh)) * t) * HD;
  const float c = scale * 1.44269504088896340736f;
  FragA qa[KB];
  load_rows<HD>(qa, qs, q, qoff, q0, t);
  const int end = min(t, q0 + TC_ROWS);
  // pass 1: the row max and Σ 2^(s·c − max)
  float m = -LL_INF, l = 0.f;
  for (int j0 = 0; j0 < end; j0 += TC_TILE) {
    __syncthreads();
    stage<HD, TC_TILE>(ks, k, koff, j0, t);
    __syncthreads();
    tile_scores<HD>(qa, ks, sw[w]);
    __syncwarp();
    float mt = -LL_INF;
    for (int cc = 0; cc < 16; cc++) {
      const int col = half * 16 + cc;
      if (i < t && j0 + col <= i) mt = fmaxf(mt, sw[w][r][col] * c);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    const float mn = fmaxf(m, mt);
    float ls = 0.f;
    for (int cc = 0; cc < 16; cc++) {
      const int col = half * 16 + cc;
      if (i < t && j0 + col <= i) ls += exp2f(sw[w][r][col] * c - mn);
    }
    ls += __shfl_xor_sync(0xffffffffu, ls, 1);
    if (mn != -LL_INF) {
      l = l * exp2f(m - mn) + ls;
      m = mn;
    }
  }
  const float li = m + log2f(l);
  // pass 2: O = Σ_j 2^(s_ij·c − lse_i) v_j, probabilities exact before the bf16 product
  FragC oc[KB];
#pragma unroll
  for (int nb = 0; nb < KB; nb++) wm::fill_fragment(oc[nb], 0.f);
  for (int j0 = 0; j0 < end; j0 += TC_TILE) {
    __syncthreads();
    stage<HD, TC_TILE>(ks, k, koff, j0, t);
    stage<HD, TC_TILE>(vs, v, koff, j0, t);
    __syncthreads();
    tile_scores<HD>(qa, ks, sw[w]);
    __syncwarp();
    for (int cc = 0; cc < 16; cc++) {
      const int col = half * 16 + cc;
      pw[w][r][col] = st<bf16>(i < t && j0 + col <= i ? exp2f(sw[w][r][col] * c - li) : 0.f);
    }
    __syncwarp();
    tile_accumulate<HD>(oc, pw[w], vs);
  }
  tile_write<HD>(oc, sw[w], o + qoff + (size_t)min(i, t - 1) * HD, i < t, 1.f);
  if (i < t && half == 0) lse[(size_t)(b * nh + h) * t + i] = li;
}

template <int HD>
__device__ void attn_bwd_kv_tc(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                               const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                               bf16* __restrict__ dk, bf16* __restrict__ dv, int nh, int kvh, int t, float scale) {
  constexpr int KB = HD / 16;
  // first the block's keys, then its values; then each step's queries (rows 0…31) and dO (32…63)
  __shared__ __align__(32) bf16 xs[TC_ROWS][HD + 8];
  __shared__ __align__(32) float sw[4][16][TC_TILE];  // Sᵀ (keys × queries)
  __shared__ __align__(32) float dw[4][16][TC_TILE];  // dPᵀ
  __shared__ __align__(32) bf16 pw[4][16][TC_TILE];   // Pᵀ
  __shared__ __align__(32) bf16 gw[4][16][TC_TILE];   // dSᵀ
  __shared__ float ls[TC_TILE], ds[TC_TILE];
  const int w = threadIdx.x / 32, r = (threadIdx.x % 32) / 2, half = threadIdx.x % 2;
  const int kh = blockIdx.y, b = blockIdx.z, j0 = blockIdx.x * TC_ROWS, j = j0 + w * 16 + r, rep = nh / kvh;
  const size_t koff = ((size_t)(b * kvh + kh) * t) * HD;
  const float c = scale * 1.44269504088896340736f;
  FragA ka[KB], va[KB];
  load_rows<HD>(ka, xs, k, koff, j0, t);
  load_rows<HD>(va, xs, v, koff, j0, t);
  FragC dkc[KB], dvc[KB];
#pragma unroll
  for (int nb = 0; nb < KB; nb++) {
    wm::fill_fragment(dkc[nb], 0.f);
    wm::fill_fragment(dvc[nb], 0.f);
  }
  for (int hh = 0; hh < rep; hh++) {
    const int h = kh * rep + hh;
    const size_t qoff = ((size_t)(b * nh + h) * t) * HD, roff = (size_t)(b * nh + h) * t;
    for (int i0 = j0; i0 < t; i0 += TC_TILE) {  // queries before the block's first key see none of it
      __syncthreads();
      stage<HD, TC_TILE>(xs, q, qoff, i0, t);
      stage<HD, TC_TILE>(xs + TC_TILE, dout, qoff, i0, t);
      for (int e = threadIdx.x; e < TC_TILE; e += 128) {
        ls[e] = i0 + e < t ? lse[roff + i0 + e] : 0.f;
        ds[e] = i0 + e < t ? delta[roff + i0 + e] : 0.f;
      }
      __syncthreads();
      tile_scores<HD>(ka, xs, sw[w]);
      tile_scores<HD>(va, xs + TC_TILE, dw[w]);
      __syncwarp();
      for (int cc = 0; cc < 16; cc++) {
        const int col = half * 16 + cc, ii = i0 + col;
        const float p = j < t && ii < t && j <= ii ? exp2f(sw[w][r][col] * c - ls[col]) : 0.f;
        pw[w][r][col] = st<bf16>(p);
        gw[w][r][col] = st<bf16>(p * (dw[w][r][col] - ds[col]));
      }
      __syncwarp();
      tile_accumulate<HD>(dvc, pw[w], xs + TC_TILE);  // dV += Pᵀ dO
      tile_accumulate<HD>(dkc, gw[w], xs);            // dK += dSᵀ Q (× scale when written)
    }
  }
  const size_t row = koff + (size_t)min(j, t - 1) * HD;
  tile_write<HD>(dkc, sw[w], dk + row, j < t, scale);
  tile_write<HD>(dvc, sw[w], dv + row, j < t, 1.f);
}

template <int HD>
__device__ void attn_bwd_q_tc(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                              const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                              bf16* __restrict__ dq, int nh, int kvh, int t, float scale) {
  constexpr int KB = HD / 16;
  // first the block's queries, then its dO; then each step's keys (rows 0…31) and values (32…63)
  __shared__ __align__(32) bf16 xs[TC_ROWS][HD + 8];
  __shared__ __align__(32) float sw[4][16][TC_TILE];  // S
  __shared__ __align__(32) float dw[4][16][TC_TILE];  // dP
  __shared__ __align__(32) bf16 gw[4][16][TC_TILE];   // dS
  const int w = threadIdx.x / 32, r = (threadIdx.x % 32) / 2, half = threadIdx.x % 2;
  const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * TC_ROWS, i = q0 + w * 16 + r;
  const size_t qoff = ((size_t)(b * nh + h) * t) * HD, koff = ((size_t)(b * kvh + h / (nh / kvh)) * t) * HD;
  const size_t roff = (size_t)(b * nh + h) * t;
  const float c = scale * 1.44269504088896340736f;
  const float li = i < t ? lse[roff + i] : 0.f, di = i < t ? delta[roff + i] : 0.f;
  FragA qa[KB], da[KB];
  load_rows<HD>(qa, xs, q, qoff, q0, t);
  load_rows<HD>(da, xs, dout, qoff, q0, t);
  FragC dqc[KB];
#pragma unroll
  for (int nb = 0; nb < KB; nb++) wm::fill_fragment(dqc[nb], 0.f);
  const int end = min(t, q0 + TC_ROWS);
  for (int j0 = 0; j0 < end; j0 += TC_TILE) {
    __syncthreads();
    stage<HD, TC_TILE>(xs, k, koff, j0, t);
    stage<HD, TC_TILE>(xs + TC_TILE, v, koff, j0, t);
    __syncthreads();
    tile_scores<HD>(qa, xs, sw[w]);
    tile_scores<HD>(da, xs + TC_TILE, dw[w]);
    __syncwarp();
    for (int cc = 0; cc < 16; cc++) {
      const int col = half * 16 + cc;
      const float p = i < t && j0 + col <= i ? exp2f(sw[w][r][col] * c - li) : 0.f;
      gw[w][r][col] = st<bf16>(p * (dw[w][r][col] - di));
    }
    __syncwarp();
    tile_accumulate<HD>(dqc, gw[w], xs);  // dQ += dS K (× scale when written)
  }
  tile_write<HD>(dqc, sw[w], dq + qoff + (size_t)min(i, t - 1) * HD, i < t, scale);
}

// ------------------------------------------------------------------ entry points
// Unmangled names, one per dtype (and head dimension): <op>_<dtype>[_<HD>].

#define LL_ROW_OPS(T, N)                                                                                          \
  extern "C" __global__ void rms_norm_fwd_##N(const T* x, const T* w, T* y, int d, float eps) {                    \
    rms_norm_fwd<T>(x, w, y, d, eps);                                                                             \
  }                                                                                                               \
  extern "C" __global__ void rms_norm_bwd_##N(const T* x, const T* w, const T* g, T* dx, int d, float eps) {       \
    rms_norm_bwd<T>(x, w, g, dx, d, eps);                                                                         \
  }                                                                                                               \
  extern "C" __global__ void rope_##N(const T* x, const float* cos, const float* sin, T* y, int rows, int t,       \
                                      int hd, float sign) {                                                       \
    rope<T>(x, cos, sin, y, rows, t, hd, sign);                                                                   \
  }                                                                                                               \
  extern "C" __global__ void dropout_##N(const T* x, T* y, unsigned long long n, unsigned long long state,         \
                                         unsigned threshold, float keep) {                                         \
    dropout<T>(x, y, n, state, threshold, keep);                                                                  \
  }                                                                                                               \
  extern "C" __global__ void swiglu_fwd_##N(const T* g, const T* u, T* y, unsigned long long n) {                 \
    swiglu_fwd<T>(g, u, y, n);                                                                                    \
  }                                                                                                               \
  extern "C" __global__ void swiglu_bwd_##N(const T* g, const T* u, const T* dy, T* dg, T* du,                     \
                                            unsigned long long n) {                                               \
    swiglu_bwd<T>(g, u, dy, dg, du, n);                                                                           \
  }                                                                                                               \
  extern "C" __global__ void nll_fwd_##N(const T* x, const unsigned* target, const float* weight, float* loss,     \
                                         int v) {                                                                 \
    nll_fwd<T>(x, target, weight, loss, v);                                                                       \
  }                                                                                                               \
  extern "C" __global__ void nll_grad_##N(const T* x, const unsigned* target, const float* weight, T* dx, int v) { \
    nll_grad<T>(x, target, weight, dx, v);                                                                        \
  }

#define LL_ATTN(T, N, HD)                                                                                          \
  extern "C" __global__ void attn_fwd_##N##_##HD(const T* q, const T* k, const T* v, T* o, float* lse, int nh,      \
                                                 int kvh, int t, float scale) {                                    \
    attn_fwd<T, HD>(q, k, v, o, lse, nh, kvh, t, scale);                                                           \
  }                                                                                                                \
  extern "C" __global__ void attn_bwd_delta_##N##_##HD(const T* o, const T* dout, float* delta, int rows) {         \
    attn_bwd_delta<T, HD>(o, dout, delta, rows);                                                                   \
  }                                                                                                                \
  extern "C" __global__ void attn_bwd_kv_##N##_##HD(const T* q, const T* k, const T* v, const T* dout,              \
                                                    const float* lse, const float* delta, T* dk, T* dv, int nh,    \
                                                    int kvh, int t, float scale) {                                 \
    attn_bwd_kv<T, HD>(q, k, v, dout, lse, delta, dk, dv, nh, kvh, t, scale);                                      \
  }                                                                                                                \
  extern "C" __global__ void attn_bwd_q_##N##_##HD(const T* q, const T* k, const T* v, const T* dout,               \
                                                   const float* lse, const float* delta, T* dq, int nh, int kvh,   \
                                                   int t, float scale) {                                           \
    attn_bwd_q<T, HD>(q, k, v, dout, lse, delta, dq, nh, kvh, t, scale);                                           \
  }

#define LL_ATTN_TC(HD)                                                                                              \
  extern "C" __global__ void attn_fwd_tc_bf16_##HD(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse,  \
                                                   int nh, int kvh, int t, float scale) {                              \
    attn_fwd_tc<HD>(q, k, v, o, lse, nh, kvh, t, scale);                                                             \
  }                                                                                                                  \
  extern "C" __global__ void attn_bwd_kv_tc_bf16_##HD(const bf16* q, const bf16* k, const bf16* v, const bf16* dout,  \
                                                      const float* lse, const float* delta, bf16* dk, bf16* dv,       \
                                                      int nh, int kvh, int t, float scale) {                          \
    attn_bwd_kv_tc<HD>(q, k, v, dout, lse, delta, dk, dv, nh, kvh, t, scale);                                        \
  }                                                                                                                  \
  extern "C" __global__ void attn_bwd_q_tc_bf16_##HD(const bf16* q, const bf16* k, const bf16* v, const bf16* dout,   \
                                                     const float* lse, const float* delta, bf16* dq, int nh, int kvh, \
                                                     int t, float scale) {                                            \
    attn_bwd_q_tc<HD>(q, k, v, dout, lse, delta, dq, nh, kvh, t, scale);                                             \
  }

LL_ROW_OPS(float, f32)
LL_ROW_OPS(bf16, bf16)
LL_ATTN(float, f32, 32)
LL_ATTN(float, f32, 64)
LL_ATTN(float, f32, 128)
LL_ATTN(bf16, bf16, 32)
LL_ATTN(bf16, bf16, 64)
LL_ATTN(bf16, bf16, 128)
LL_ATTN_TC(32)
LL_ATTN_TC(64)
LL_ATTN_TC(128)
