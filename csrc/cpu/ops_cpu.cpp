#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU implementations of the mnv3 operators (dispatch key CPU): argument checks, layout
// choice and threading. The arithmetic lives in the per-ISA kernel tables
// (kernels_avx512.cpp, kernels_avx2.cpp, kernels_portable.cpp), picked at run time.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <vector>

#include "../common/activation.h"
#include "../common/checks.h"
#include "isa.h"
#include "kernels.h"
#include "plan.h"

namespace mnv3 {
namespace cpu {
namespace {

const KernelTable& kernels() {
  switch (active_isa()) {
    case Isa::Avx512:
      return avx512_kernels();
    case Isa::Avx2:
      return avx2_kernels();
    default:
      return portable_kernels();
  }
}

// Below this many elements an element-wise pass runs on the calling thread: an OpenMP
// fork/join costs several microseconds.
constexpr int64_t kSerialElems = 1 << 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

at::Tensor dwconv_bn_act_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const c10::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             c10::string_view activation) {
  const char* op = "mnv3::dwconv_bn_act (CPU)";
  const DwConvParams p = check_dwconv_args(op, x_in, weight_in, bias_in, stride, padding, dilation);
  const Activation act = parse_activation(activation);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const auto fmt = output_memory_format(x_in);
  at::Tensor out = at::empty({p.N, p.C, p.OH, p.OW}, x_in.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  // Neither NCHW- nor NHWC-dense inputs (slices, permutes) are copied once into the output's
  // layout; the two dense layouts are read in place.
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = weight_in.contiguous();
  at::Tensor b;
  if (bias_in.has_value()) b = bias_in->contiguous();

  DwArgs a;
  a.p = p;
  a.act = static_cast<int>(act);
  a.x = x.data_ptr<float>();
  a.y = out.data_ptr<float>();
  a.w = w.data_ptr<float>();
  a.b = b.defined() ? b.data_ptr<float>() : nullptr;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const bool nested = at::in_parallel_region();
  const KernelTable& k = kernels();
  const DwPlan plan = plan_dwconv(a, nhwc, k.lanes, nested ? 1 : at::get_num_threads());
  auto body = [&](int64_t begin, int64_t end) {
    if (nhwc) {
      k.dw_nhwc(a, begin, end);
    } else {
      k.dw_nchw(a, begin, end);
    }
  };
  if (plan.parallel && plan.items > 1) {
    at::parallel_for(0, plan.items, 1, body);
  } else {
    body(0, plan.items);
  }
  return out;
}

// [begin, end) of thread `tid` of `nt` over n items.
inline void split(int64_t n, int tid, int nt, int64_t& begin, int64_t& end) {
  begin = n * tid / nt;
  end = n * (tid + 1) / nt;
}

// Squeeze-excite of x: the gate hardsigmoid(fc2(relu(fc1(mean_hw(x))))) into gate_out (N, C)
// and, when y_out is given, y = x * gate. gate_only: the squeeze_excite_gate op (no pass over x
// but the pooling one; the caller folds the gate into the next 1x1 conv).
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
        k.pixel_sums(xp + n * HW * C, sums.data() + n * C, C, HW, c0, std::min(C, c0 + 64));
      }
    } else {
      split(N * C, tid, nt, b, e);
      k.plane_sums(xp, sums.data(), HW, b, e);
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
        k.scale_pixels(xp, yp, gate + n * C, C, b, stop);
        b = stop;
      }
    } else {
      split(N * C, tid, nt, b, e);
      k.scale_planes(xp, yp, gate, HW, b, e);
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

// y[i] = act(x[i]) over n floats in chunks across threads; y may be x (each element is read
// before it is written, by the same thread).
void hard_act_flat(const float* xp, float* yp, int64_t n, bool swish) {
  if (n == 0) return;
  const KernelTable& k = kernels();
  constexpr int64_t kChunk = 1 << 14;
  run_items(ceil_div(n, kChunk), n, kSerialElems, [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * kChunk, hi = std::min(n, end * kChunk);
    k.hard_act(xp + lo, yp + lo, hi - lo, swish);
  });
}

template <bool Swish>
at::Tensor hard_act_cpu(const at::Tensor& x_in) {
  const char* op = Swish ? "mnv3::hardswish (CPU)" : "mnv3::hardsigmoid (CPU)";
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  // Dense inputs of any layout are processed as flat storage; the output takes their strides.
  at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (out.strides() != x.strides()) {
    x = x.contiguous();
    out = at::empty_like(x);
  }
  hard_act_flat(x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x.numel(), Swish);
  return out;
}

template <bool Swish>
void hard_act_inplace_cpu(const at::Tensor& x) {
  const char* op = Swish ? "mnv3::hardswish_ (CPU)" : "mnv3::hardsigmoid_ (CPU)";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x.scalar_type());
  check_writable_in_place(op, x);
  if (x.numel() == 0) return;
  if (x.is_non_overlapping_and_dense()) {
    float* p = x.mutable_data_ptr<float>();
    hard_act_flat(p, p, x.numel(), Swish);
    return;
  }
  // A strided view (a slice, a transpose of a slice): computed packed, then written back.
  x.copy_(hard_act_cpu<Swish>(x));
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act_cpu);
  m.impl("squeeze_excite", &squeeze_excite_cpu);
  m.impl("squeeze_excite_gate", &squeeze_excite_gate_cpu);
  m.impl("hardswish", &hard_act_cpu<true>);
  m.impl("hardsigmoid", &hard_act_cpu<false>);
  m.impl("hardswish_", &hard_act_inplace_cpu<true>);
  m.impl("hardsigmoid_", &hard_act_inplace_cpu<false>);
}

}  // namespace cpu
}  // namespace mnv3
