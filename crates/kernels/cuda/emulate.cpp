// kernels.cu compiled for the CPU (emu.h), behind one launcher shaped like the driver's
// cuLaunchKernel: a kernel name, the grid, the block and an array of pointers to the
// arguments. crates/kernels/tests drives it; nothing in the product calls it.
#include "emu.h"
#include "kernels.cu"

#include <cstring>
#include <mutex>
#include <type_traits>
#include <utility>

template <typename... A, size_t... I>
static void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
  k(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
static std::function<void()> bind(void (*k)(A...), void** args) {
  return [=] { call(k, args, std::index_sequence_for<A...>{}); };
}

struct Entry {
  const char* name;
  std::function<void()> (*make)(void**);
};

#define K(n) {#n, [](void** a) { return bind(n, a); }},
#define K_ATTN(N, HD) K(attn_fwd_##N##_##HD) K(attn_bwd_delta_##N##_##HD) K(attn_bwd_kv_##N##_##HD) K(attn_bwd_q_##N##_##HD)
#define K_ROWS(N) K(rms_norm_fwd_##N) K(rms_norm_bwd_##N) K(rope_##N) K(dropout_##N) K(swiglu_fwd_##N) K(swiglu_bwd_##N) K(nll_fwd_##N) K(nll_grad_##N)

#define K_TC(HD) K(attn_fwd_tc_bf16_##HD) K(attn_bwd_kv_tc_bf16_##HD) K(attn_bwd_q_tc_bf16_##HD)

static const Entry kTable[] = {K(opt_moment) K(opt_adam) K(opt_lion) K_TC(32) K_TC(64) K_TC(128) K(sum_f32) K_ROWS(f32) K_ROWS(bf16) K_ATTN(f32, 32) K_ATTN(f32, 64) K_ATTN(f32, 128)
                                   K_ATTN(bf16, 32) K_ATTN(bf16, 64) K_ATTN(bf16, 128)};

// 0 on success, -1 for an unknown kernel name. One launch at a time (the emulator's state
// is global, as a GPU's would be), whatever threads the tests run on.
extern "C" int loralab_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, void** args) {
  static std::mutex one;
  std::lock_guard<std::mutex> lock(one);
  for (const Entry& e : kTable)
    if (std::strcmp(e.name, name) == 0) {
      emu::launch({gx, gy, gz}, {bx, 1, 1}, e.make(args));
      return 0;
    }
  return -1;
}
