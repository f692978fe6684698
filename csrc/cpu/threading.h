// Threading helpers of the CPU operators (torch side; the kernels themselves are plain C++).
#pragma once

#include <ATen/Parallel.h>

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

// [begin, end) of thread `tid` of `nt` over n items.
inline void split(int64_t n, int tid, int nt, int64_t& begin, int64_t& end) {
  begin = n * tid / nt;
  end = n * (tid + 1) / nt;
}

}  // namespace cpu
}  // namespace mnv3
