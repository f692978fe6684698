#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU entry of the pointwise (1x1) conv operators: argument checks, weight packing, work split
// and threading. The arithmetic is in the per-ISA GEMM kernels (f32_gemm_*.cpp, pointwise.h).
//
//   mnv3::pack_pointwise_weight(weight, bias)            -> panels (any device; ATen ops)
//   mnv3::pointwise_conv_bn_act_packed(x, packed, ...)    the kernel call (modules cache packed)
//   mnv3::pointwise_conv_bn_act(x, weight, bias, ...)     packs, then the above (functional API)
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "../common/activation.h"
#include "../common/checks.h"
#include "isa.h"
#include "packed_ops.h"
#include "pointwise.h"
#include "stream_policy.h"
#include "threading.h"

namespace mnv3 {
namespace cpu {

const PointwiseKernels& pointwise_kernels() {
  switch (active_isa()) {
    case Isa::Avx512:
      return pointwise_avx512();
    case Isa::Avx2:
      return pointwise_avx2();
    default:
      return pointwise_portable();
  }
}

float* gemm_thread_scratch(int64_t floats) {
  struct Buf {
    std::unique_ptr<float[]> base;
    int64_t cap = 0;
  };
  thread_local Buf buf;
  if (buf.cap < floats) {
    buf.base.reset(new float[floats + 16]);
    buf.cap = floats;
  }
  const auto addr = reinterpret_cast<uintptr_t>(buf.base.get());
  return buf.base.get() + ((64 - addr % 64) % 64) / sizeof(float);
}

namespace {

// Below this many multiply-adds a call runs on the calling thread: an OpenMP fork/join costs a
// few microseconds, about what one core needs for this much GEMM work.
constexpr int64_t kSerialMacs = int64_t(1) << 18;
// NCHW work is split between threads in blocks of this many pixels.
constexpr int64_t kPixelBlock = 64;

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }

// The weight as (Cout, K): accepts (Cout, K) and (Cout, K, 1, 1).
at::Tensor weight_2d(const char* op, const at::Tensor& weight) {
  if (weight.dim() == 4) {
    TORCH_CHECK_VALUE(weight.size(2) == 1 && weight.size(3) == 1, op,
                      ": weight must be (Cout, Cin) or (Cout, Cin, 1, 1), got ", weight.sizes());
    return weight.reshape({weight.size(0), weight.size(1)});
  }
  TORCH_CHECK_VALUE(weight.dim() == 2, op,
                    ": weight must be (Cout, Cin) or (Cout, Cin, 1, 1), got ", weight.sizes());
  return weight;
}

// Splits [0, units) into `parts` near-equal ranges and runs f(begin, end) for each, threaded
// when parts > 1 (one parallel region per call).
template <typename F>
void run_parts(int64_t units, int64_t parts, const F& f) {
  if (parts <= 1) {
    f(0, units);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(units * i / parts, units * (i + 1) / parts);
  });
}

// Part `part` of `parts` of an NHWC call: its share of the units (row tiles, or row tiles x
// weight panels), contiguous ranges of near-equal size.
void nhwc_part(const PointwiseKernels& k, const PwArgs& a, int64_t part, int64_t parts) {
  const int64_t P = pointwise_panels(a.Cout);
  // Without a per-sample scale the batch is one run of N*HW rows; with one, each sample is a
  // run of its own (its rows see their own scale).
  const bool per_sample = a.scale != nullptr;
  const int64_t segs = per_sample ? a.N : 1;
  const int64_t rows = per_sample ? a.HW : a.N * a.HW;
  const int64_t tiles = cdiv(rows, k.mr);
  // Split where the bigger operand is: few rows and many output channels (7x7 and 14x14 layers
  // at batch 1) over the weight panels, so every thread reads a part of the weights; otherwise
  // over the rows, so every thread reads a part of x.
  const bool by_panel = parts > 1 && a.N * a.HW < a.Cout && P > 1;
  // Split over groups of panels where the kernels have tiles wider than a panel.
  const int64_t pg = k.panel_group, groups = cdiv(P, pg);
  const int64_t units = segs * (by_panel ? groups : 1) * tiles;
  int64_t u0 = units * part / parts;
  const int64_t u1 = units * (part + 1) / parts;
  float* scratch = per_sample && u0 < u1 ? gemm_thread_scratch(pointwise_scratch_floats(a.K)) : nullptr;
  const int64_t span = tiles * (by_panel ? groups : 1);  // units per segment
  while (u0 < u1) {
    const int64_t seg = u0 / span, in_seg = u0 % span;
    const int64_t p = by_panel ? in_seg / tiles * pg : 0;
    const int64_t t0 = in_seg % tiles;
    const int64_t t1 = lmin(tiles, t0 + (u1 - u0));
    k.nhwc(a, seg, t0 * k.mr, lmin(rows, t1 * k.mr), p, by_panel ? lmin(P, p + pg) : P, scratch);
    u0 += t1 - t0;
  }
}

void run_nhwc(const PointwiseKernels& k, const PwArgs& a, int64_t parts) {
  if (parts <= 1) return nhwc_part(k, a, 0, 1);
  at::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) nhwc_part(k, a, i, parts);
  });
}

void run_nchw(const PointwiseKernels& k, const PwArgs& a, int64_t parts) {
  const int64_t P = pointwise_panels(a.Cout), pf = pointwise_panel_floats(a.K);
  const int64_t blocks = cdiv(a.HW, kPixelBlock);
  const bool by_panel = parts > 1 && a.N * a.HW < a.Cout && P > 1;
  run_parts(a.N * (by_panel ? P : 1) * blocks, parts, [&](int64_t u0, int64_t u1) {
    float* scratch = a.scale != nullptr ? gemm_thread_scratch(pf) : nullptr;
    const int64_t span = blocks * (by_panel ? P : 1);
    while (u0 < u1) {
      const int64_t n = u0 / span, in_n = u0 % span;
      const int64_t p = by_panel ? in_n / blocks : 0;
      const int64_t b0 = in_n % blocks;
      const int64_t b1 = lmin(blocks, b0 + (u1 - u0));
      k.nchw(a, n, b0 * kPixelBlock, lmin(a.HW, b1 * kPixelBlock), p, by_panel ? p + 1 : P,
             scratch);
      u0 += b1 - b0;
    }
  });
}

void check_cpu_float(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
}

}  // namespace

void pointwise_nhwc_part(const PwArgs& a, int64_t part, int64_t parts) {
  nhwc_part(pointwise_kernels(), a, part, parts);
}

at::Tensor pack_pointwise_weight(const at::Tensor& weight_in, const c10::optional<at::Tensor>& bias) {
  const char* op = "mnv3::pack_pointwise_weight";
  const at::Tensor w = weight_2d(op, weight_in);
  const int64_t cout = w.size(0), K = w.size(1), P = pointwise_panels(cout);
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == cout, op, ": bias must be (Cout,) = (",
                      cout, ",), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == w.scalar_type(), op, ": bias dtype ",
                     bias->scalar_type(), " does not match weight dtype ", w.scalar_type());
    TORCH_CHECK_VALUE(bias->device() == w.device(), op, ": bias is on ", bias->device(),
                      " but weight is on ", w.device());
    b = *bias;
  }
  if (w.device().is_cpu() && w.scalar_type() == at::kFloat) {
    // One pass, in blocks of 16 input channels so each weight row is read a cache line at a
    // time: the cat / pad / permute below took 2.96 ms for 1280 x 960 (2 threads), which a
    // torch.compile graph or an unpacked op call pays on every call.
    const at::Tensor wc = w.contiguous();
    const at::Tensor bc = b.defined() ? b.contiguous() : at::Tensor();
    const float* src = wc.const_data_ptr<float>();
    const float* bsrc = bc.defined() ? bc.const_data_ptr<float>() : nullptr;
    at::Tensor out = at::empty({P, K + 1, kPanel}, w.options());
    float* dst = out.mutable_data_ptr<float>();
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        float* d = dst + p * (K + 1) * kPanel;
        const int64_t c0 = p * kPanel, n = std::min(kPanel, cout - c0);
        if (n < kPanel) std::fill(d, d + (K + 1) * kPanel, 0.0f);
        for (int64_t j = 0; j < n; ++j) d[j] = bsrc != nullptr ? bsrc[c0 + j] : 0.0f;
        for (int64_t k0 = 0; k0 < K; k0 += 16) {
          const int64_t k1 = std::min(K, k0 + 16);
          for (int64_t j = 0; j < n; ++j) {
            const float* s = src + (c0 + j) * K;
            for (int64_t k = k0; k < k1; ++k) d[(k + 1) * kPanel + j] = s[k];
          }
        }
      }
    });
    return out;
  }
  if (!b.defined()) b = at::zeros({cout}, w.options());
  // [bias; W^T] is (K + 1, Cout); pad Cout to whole panels and cut it into (P, K + 1, kPanel).
  const at::Tensor rows = at::cat({b.reshape({1, cout}), w.t()}, 0);
  const at::Tensor padded = at::constant_pad_nd(rows, {0, P * kPanel - cout}, 0);
  return padded.reshape({K + 1, P, kPanel}).permute({1, 0, 2}).contiguous();
}

at::Tensor pointwise_conv_bn_act_packed_cpu(const at::Tensor& x_in, const at::Tensor& packed,
                                            int64_t out_channels, c10::string_view activation,
                                            const c10::optional<at::Tensor>& residual,
                                            const c10::optional<at::Tensor>& input_scale) {
  const char* op = "mnv3::pointwise_conv_bn_act (CPU)";
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x_in.dim(), "-D");
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const Activation act = parse_activation(activation);
  const int64_t N = x_in.size(0), K = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK_VALUE(out_channels >= 1, op, ": out_channels must be >= 1, got ", out_channels);
  const int64_t P = pointwise_panels(out_channels);
  TORCH_CHECK_VALUE(packed.dim() == 3 && packed.size(0) == P && packed.size(1) == K + 1 &&
                        packed.size(2) == kPanel,
                    op, ": packed weight must be (", P, ", ", K + 1, ", ", kPanel, ") for ",
                    out_channels, " output channels and ", K,
                    " input channels (from mnv3::pack_pointwise_weight), got ", packed.sizes());
  check_cpu_float(op, "packed weight", packed, x_in);
  const auto fmt = output_memory_format(x_in);
  at::Tensor out = at::empty({N, out_channels, H, W}, x_in.options().memory_format(fmt));
  if (residual.has_value()) {
    TORCH_CHECK_VALUE(residual->sizes() == out.sizes(), op, ": residual must have the output's shape ",
                      out.sizes(), ", got ", residual->sizes());
    check_cpu_float(op, "residual", *residual, x_in);
  }
  if (input_scale.has_value()) {
    TORCH_CHECK_VALUE(input_scale->dim() == 2 && input_scale->size(0) == N && input_scale->size(1) == K,
                      op, ": input_scale must be (N, Cin) = (", N, ", ", K, "), got ",
                      input_scale->sizes());
    check_cpu_float(op, "input_scale", *input_scale, x_in);
  }
  if (out.numel() == 0) return out;
  // Layouts other than dense NCHW / NHWC (slices, permutes) are copied once into the output's.
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor pk = packed.contiguous();
  at::Tensor res, scale;
  if (residual.has_value()) res = residual->contiguous(fmt);
  if (input_scale.has_value()) scale = input_scale->contiguous();

  PwArgs a;
  a.N = N;
  a.HW = H * W;
  a.K = K;
  a.Cout = out_channels;
  a.act = static_cast<int>(act);
  a.x = x.const_data_ptr<float>();
  a.y = out.mutable_data_ptr<float>();
  a.packed = pk.const_data_ptr<float>();
  a.residual = res.defined() ? res.const_data_ptr<float>() : nullptr;
  a.scale = scale.defined() ? scale.const_data_ptr<float>() : nullptr;

  const PointwiseKernels& k = pointwise_kernels();
  const int64_t macs = N * a.HW * K * out_channels;
  const int64_t parts =
      (at::in_parallel_region() || macs < kSerialMacs) ? 1 : at::get_num_threads();
  a.stream = stream_output(out.numel() * static_cast<int64_t>(sizeof(float)), parts);
  // With one pixel per sample both layouts are the same memory, rows of K: the NHWC kernels
  // (a matrix-vector product at batch 1; a Linear layer) instead of pixel vectors one lane wide
  // (measured on 960 -> 1280, batch 1, one thread: 248 -> 60 us).
  if (fmt == at::MemoryFormat::ChannelsLast || a.HW == 1) {
    run_nhwc(k, a, parts);
  } else {
    run_nchw(k, a, parts);
  }
  return out;
}

at::Tensor pointwise_conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias,
                                     c10::string_view activation,
                                     const c10::optional<at::Tensor>& residual,
                                     const c10::optional<at::Tensor>& input_scale) {
  const char* op = "mnv3::pointwise_conv_bn_act (CPU)";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  const at::Tensor w = weight_2d(op, weight);
  TORCH_CHECK_VALUE(w.size(1) == x.size(1), op, ": weight has ", w.size(1),
                    " input channels but x has ", x.size(1));
  TORCH_CHECK_VALUE(w.size(0) >= 1, op, ": weight must have at least one output channel");
  check_cpu_float(op, "weight", w, x);
  if (bias.has_value()) check_cpu_float(op, "bias", *bias, x);
  return pointwise_conv_bn_act_packed_cpu(x, pack_pointwise_weight(w, bias), w.size(0), activation,
                                          residual, input_scale);
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("pointwise_conv_bn_act", &pointwise_conv_bn_act_cpu);
  m.impl("pointwise_conv_bn_act_packed", &pointwise_conv_bn_act_packed_cpu);
}

// Packing is ATen ops only: it runs on every device and on fake tensors (torch.compile).
TORCH_LIBRARY_IMPL(mnv3, CompositeExplicitAutograd, m) {
  m.impl("pack_pointwise_weight", &pack_pointwise_weight);
}

}  // namespace cpu
}  // namespace mnv3
