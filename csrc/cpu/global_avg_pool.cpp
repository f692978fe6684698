#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU kernel of mnv3::global_avg_pool: per-(n, c) means over H, W, threaded over (sample,
// channel) ranges. At the end of a converted MobileNetV3's features (960 x 7 x 7 at batch 1)
// PyTorch's adaptive_avg_pool2d reads the map on one thread; this splits the channels over
// the threads (each reading a contiguous slice of every pixel's channels, channels_last).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"

namespace mnv3 {
namespace cpu {
namespace {

// dst[n, c] = mean over p of src[(n * HW + p) * C + c], for the flat (n, c) range [begin, end).
void means_nhwc(const float* src, float* dst, int64_t C, int64_t HW, int64_t begin, int64_t end) {
  const float inv = 1.0f / static_cast<float>(HW);  // HW = 0: 0 * inf = NaN, as PyTorch
  for (int64_t i = begin; i < end;) {
    const int64_t n = i / C, c0 = i % C, c1 = std::min(C, c0 + (end - i));
    float* d = dst + n * C;
    std::fill(d + c0, d + c1, 0.0f);
    for (int64_t p = 0; p < HW; ++p) {
      const float* row = src + (n * HW + p) * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c) d[c] *= inv;
    i += c1 - c0;
  }
}

// dst[i] = mean of the contiguous plane src[i * HW, (i + 1) * HW), i in [begin, end).
void means_nchw(const float* src, float* dst, int64_t HW, int64_t begin, int64_t end) {
  const float inv = 1.0f / static_cast<float>(HW);
  for (int64_t i = begin; i < end; ++i) {
    const float* plane = src + i * HW;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent sums: vectorizes, shorter chains
    int64_t p = 0;
    for (; p + 8 <= HW; p += 8)
      for (int j = 0; j < 8; ++j) acc[j] += plane[p + j];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; p < HW; ++p) s += plane[p];
    dst[i] = s * inv;
  }
}

}  // namespace

at::Tensor global_avg_pool_cpu(const at::Tensor& x) {
  const char* op = "mnv3::global_avg_pool (CPU)";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const at::MemoryFormat format = output_memory_format(x);  // NCHW unless x is channels_last
  const bool nhwc = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor src = x.contiguous(format);
  at::Tensor out = at::empty({N, C, 1, 1}, x.options().memory_format(format));
  const float* s = src.const_data_ptr<float>();
  float* d = out.mutable_data_ptr<float>();
  // Grain: enough (sample, channel) pairs that a thread's share is worth a fork (64K values:
  // MobileNetV3-Large's last pool at batch 1, 960 x 7 x 7, took 31 us on 2 threads and 23 us on
  // one, so it runs on one).
  const int64_t grain = std::max<int64_t>(16, 65536 / std::max<int64_t>(HW, 1));
  at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
    if (nhwc)
      means_nhwc(s, d, C, HW, begin, end);
    else
      means_nchw(s, d, HW, begin, end);
  });
  return out;
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) { m.impl("global_avg_pool", &global_avg_pool_cpu); }

}  // namespace cpu
}  // namespace mnv3
