#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU entry of mnv3::squeeze_excite and mnv3::squeeze_excite_gate: argument checks, layout and
// threading of their phases. Kernels: kernels/f32_squeeze_excite.h.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <vector>

#include "../common/checks.h"
#include "kernels.h"
#include "threading.h"

namespace mnv3 {
namespace cpu {
namespace {

// The gate hardsigmoid(fc2(relu(fc1(mean_hw(x))))) into gate_out (N, C) and, unless gate_only,
// y = x * gate into out. gate_only is the squeeze_excite_gate op: one pass over x (the pooling);
// a fused block folds the gate into the next 1x1 conv instead of scaling x.
void squeeze_excite_run(const char* op, const at::Tensor& x_in, const at::Tensor& fc1_weight,
                        const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                        const at::Tensor& fc2_bias, at::Tensor& out, at::Tensor& gate_out,
                        bool gate_only) {
  check_squeeze_excite_args(op, x_in, fc1_weight, fc1_bias, fc2_weight, fc2_bias);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const auto fmt = output_memory_format(x_in);
  if (!gate_only) out = at::empty(x_in.sizes(), x_in.options().memory_format(fmt));
  gate_out = at::empty({x_in.size(0), x_in.size(1)}, x_in.options());
  if (x_in.size(0) == 0 || x_in.size(1) == 0) return;
  if (x_in.size(2) * x_in.size(3) == 0) {
    TORCH_CHECK_VALUE(!gate_only, op, ": x has no pixels to pool (H*W = 0)");
    return;
  }
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w1 = fc1_weight.contiguous(), b1 = fc1_bias.contiguous();
  const at::Tensor w2 = fc2_weight.contiguous(), b2 = fc2_bias.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), R = w1.size(0);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const float* xp = x.data_ptr<float>();
  float* yp = gate_only ? nullptr : out.data_ptr<float>();
  const float *w1p = w1.data_ptr<float>(), *b1p = b1.data_ptr<float>();
  const float *w2p = w2.data_ptr<float>(), *b2p = b2.data_ptr<float>();
  const KernelTable& k = kernels();
  std::vector<float> sums(static_cast<size_t>(N * C));
  float* gate = gate_out.data_ptr<float>();
  std::vector<float> hidden(static_cast<size_t>(std::max<int64_t>(N * R, 1)));
  const float inv_hw = 1.0f / static_cast<float>(HW);
  const int64_t cblocks = ceil_div(C, 64);

  // Four phases (pool, fc1, fc2, scale), each split over the threads, in one parallel region:
  // a fork/join per phase would cost more than a phase of a batch-1 layer.
  auto phases = [&](int tid, int nt, const auto& barrier) {
    int64_t b, e;
    if (nhwc) {
      split(N * cblocks, tid, nt, b, e);
      for (int64_t i = b; i < e; ++i) {
        const int64_t n = i / cblocks, c0 = (i % cblocks) * 64;
        k.se_pixel_sums(xp + n * HW * C, sums.data() + n * C, C, HW, c0, std::min(C, c0 + 64));
      }
    } else {
      split(N * C, tid, nt, b, e);
      k.se_plane_sums(xp, sums.data(), HW, b, e);
    }
    barrier();
    split(R, tid, nt, b, e);
    k.se_fc1(sums.data(), inv_hw, w1p, b1p, hidden.data(), N, C, R, b, e);
    barrier();
    split(C, tid, nt, b, e);
    k.se_fc2(hidden.data(), w2p, b2p, gate, N, C, R, b, e);
    if (gate_only) return;
    barrier();
    if (nhwc) {
      // Flat pixel range over all samples, split where the sample (and so the gate) changes.
      split(N * HW, tid, nt, b, e);
      while (b < e) {
        const int64_t n = b / HW, stop = std::min(e, (n + 1) * HW);
        k.se_scale_pixels(xp, yp, gate + n * C, C, b, stop);
        b = stop;
      }
    } else {
      split(N * C, tid, nt, b, e);
      k.se_scale_planes(xp, yp, gate, HW, b, e);
    }
  };

  // element passes + multiply-adds
  const int64_t work = (gate_only ? 1 : 3) * N * C * HW + 2 * N * C * R;
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), 16));
  if (work < kSerialElems || threads <= 1 || at::in_parallel_region()) {
    phases(0, 1, [] {});
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  phases(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
  });
#else
  phases(0, 1, [] {});
#endif
}

at::Tensor squeeze_excite_cpu(const at::Tensor& x, const at::Tensor& fc1_weight,
                              const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                              const at::Tensor& fc2_bias) {
  at::Tensor out, gate;
  squeeze_excite_run("mnv3::squeeze_excite (CPU)", x, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                     out, gate, false);
  return out;
}

at::Tensor squeeze_excite_gate_cpu(const at::Tensor& x, const at::Tensor& fc1_weight,
                                   const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                   const at::Tensor& fc2_bias) {
  at::Tensor out, gate;
  squeeze_excite_run("mnv3::squeeze_excite_gate (CPU)", x, fc1_weight, fc1_bias, fc2_weight,
                     fc2_bias, out, gate, true);
  return gate;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("squeeze_excite", &squeeze_excite_cpu);
  m.impl("squeeze_excite_gate", &squeeze_excite_gate_cpu);
}

}  // namespace cpu
}  // namespace mnv3
