// Threading helpers of the CPU operators (torch side; the kernels themselves are plain C++).
#pragma once

#include <ATen/Parallel.h>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include <cstdint>

namespace mnv3 {
namespace cpu {

// Below this many elements an element-wise pass runs on the calling thread: an OpenMP
// fork/join costs several microseconds.
constexpr int64_t kSerialElems = 1 << 16;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs f(begin, end) over [0, n), threaded only when the whole call is worth it.
template <typename F>
void run_items(int64_t n, int64_t total_work, int64_t serial_work, const F& f) {
  if (n <= 0) return;
  if (total_work < serial_work || n == 1 || at::get_num_threads() == 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  at::parallel_for(0, n, 1, f);
}

// Whether an output of `bytes` written by `threads` threads should go out as streaming stores:
// when it is larger than those threads' L2 caches it leaves them anyway, and a streaming store
// neither reads each line first nor evicts what the kernel still needs. Measured on the 2-core
// AVX-512 VM (2 MB L2 per core; its shared L3 holds almost nothing): MobileNetV3-Large's first
// block at batch 8 (6.4 MB out) 1.58 -> 1.35 ms. The L3 is left out of the rule: where it would
// hold the output for the next layer, that layer reads it from memory instead (not measured).
inline bool stream_output(int64_t bytes, int64_t threads) {
  static const int64_t l2 = [] {
    long v = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return v > 0 ? static_cast<int64_t>(v) : int64_t(1) << 20;  // unknown: 1 MB
  }();
  return bytes > l2 * (threads > 1 ? threads : 1);
}

// [begin, end) of thread `tid` of `nt` over n items.
inline void split(int64_t n, int tid, int nt, int64_t& begin, int64_t& end) {
  begin = n * tid / nt;
  end = n * (tid + 1) / nt;
}

}  // namespace cpu
}  // namespace mnv3
