#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU entry of mnv3::inverted_residual[_packed]: a whole inverted-residual block
//   [1x1 expand + act] -> depthwise k x k + act -> [squeeze-excite gate] -> 1x1 project [+ x]
// in one call. The arithmetic is the pointwise GEMM kernels (pointwise.h) and the depthwise row
// kernels (kernels/f32_dwconv_band.h); this file is the schedule.
//
// Each thread runs bands of output rows (sample n, rows [oa, ob)) in groups of G rows. A group
// expands the input rows its depthwise taps need into a per-thread row buffer (rows already
// there from the previous group are kept: the buffer slides down the image), runs the depthwise
// rows from it, and projects them at once (+ the residual, read from x), so the expanded tensor
// never exists in full: it lives in a few rows of L2, its pixels padded to whole cache lines
// (buffer_pixel_stride). Where the depthwise shape has compile-time kernels (which skip padding
// columns) the buffer rows hold the image columns only and a group's new rows are one GEMM call;
// otherwise each row is stored between zero padding columns.
//
// With squeeze-excite the projection needs the gate, i.e. the mean of the whole depthwise
// output. When whole samples are the items (batch >= threads), a thread writes a sample's
// depthwise output into its own buffer (it stays in L2), sums each group's channels while they
// are in cache, runs the gate MLP and projects the sample with the gate folded in as the GEMM's
// input scale; where the gate's weights outweigh a sample's depthwise output (7x7 layers), an
// item is a few samples whose gates are computed together (kSeChunkBytes). Otherwise (a sample
// split over threads) phase 1 writes the depthwise output and the sums, the threads meet at a
// barrier, and phase 2 runs the gate and the projection. A single sample whose expanded
// channels the threads split (7x7 and 14x14 layers at batch 1) is projected by the same split:
// each thread multiplies the channels it holds, and the partial sums are added.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "../common/activation.h"
#include "../common/checks.h"
#include "kernels.h"
#include "packed_ops.h"
#include "pointwise.h"
#include "stream_policy.h"
#include "threading.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mnv3 {
namespace cpu {
namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Output pixels a group of rows should have: about 400 (4 rows of 112, 8 of 56, 15 of 28, a
// band of 14 or 7), where the row buffer budget allows. Each depthwise tile then reads its input
// rows into L1 once for many output rows, and the GEMM calls are long. Measured on 2 threads,
// batch 8, fastest of 150 calls, against 32 pixels: Large's blocks 0-4 5-12% faster at 400,
// 3-8% at 192; 800 slower again for blocks 1 and 2. Whole Large, alternating: batch 1 -3%,
// batch 8 -1%.
constexpr int64_t kGroupPixels = 400;
// Row buffer budget in floats (256 KB): rows beyond the minimum a group needs let the buffer
// slide several groups before it must move its kept rows to the front.
constexpr int64_t kBufferFloats = 64 * 1024;
// Depthwise output of the samples whose squeeze-excite gates a thread computes together (each
// SE weight read once for them), where those weights outweigh a sample's depthwise output.
// Batch 8 on 2 threads, alternating, 1 sample per item against this: Large's 7x7 blocks
// 1232 -> 1026 us (4 samples), its 14x14 stride-2 block 1368 -> 1325 (4); 14x14 with 672
// channels stays at 1 sample (527 KB each; 3 samples in 2 MB were 23% slower).
constexpr int64_t kSeChunkBytes = 1 << 20;
// Below this many multiply-adds a block runs on the calling thread (fork/join costs a few us).
constexpr int64_t kSerialMacs = int64_t(1) << 18;
// Threads that split a block's expanded channels take multiples of this many (a multiple of
// every ISA's vector width and GEMM slice): half panels, so 15 panels split 7.5 / 7.5.
constexpr int64_t kChannelStep = 16;

// Whether a sample's squeeze-excite gate goes into the projection's weights (W diag(gate), once
// per sample) rather than into its input (the GEMM scales x chunk by chunk): where the weights
// are the smaller. One core, 28x28 with 120 -> 40 channels: 58 -> 48 us, the time without a
// gate.
bool gate_in_weights(int64_t cout, int64_t pixels) {
  return pointwise_panels(cout) * kPanel < pixels;
}

// Floats per pixel of the row buffer that the expand conv writes and the depthwise kernels read:
// a whole number of 64-byte lines, and an odd number where the channels would start pixels in
// mid-line or 2^k lines apart (a tile's input pixels then fall in a few L1 sets). One core, a
// group's rows in cache, depthwise time: 64 channels 112 wide stride 2 5.2 -> 4.3 us (80
// floats), 72 at 56 wide 8.7 -> 7.9 (80), 120 at 28 wide k = 5 20.9 -> 19.3 (144; 128: 20.2),
// 184 and 200 at 14 wide 8.5 -> 7.6 and 9.4 -> 8.3 (208), 88 at 28 wide 9.0 -> 8.0 (112). Whole
// lines that are not a power of two stay (96, 288, 576, 960: padding them was 0-25% slower).
int64_t buffer_pixel_stride(int64_t Ce) {
  const int64_t lines = cdiv(Ce, 16);
  if (Ce % 16 == 0 && (lines == 1 || (lines & (lines - 1)) != 0)) return Ce;
  return (lines | 1) * 16;
}

// Channels the expand conv writes to each buffer pixel: Ce, or up to the end of its last panel
// where that makes the last two panels whole (the packed weights and bias past Ce are zeros, so
// the extra channels hold zeros, which the depthwise kernels never read) and the padded pixel
// has room: 120 -> 128 and 184 -> 192 are two-panel tiles instead of a panel tile and a tile of
// a vector and a pair. One core, 784 px 40 -> 120 52.6 -> 47.9 us, 196 px 80 -> 184 35.3 ->
// 33.5 (88 -> 96, a panel tile instead of a vector and a pair: 24.6 -> 25.5, not done).
int64_t expand_columns(int64_t Ce, int64_t pxs) {
  const int64_t panels = pointwise_panels(Ce), full = panels * kPanel;
  return Ce % kPanel > kPanel / 2 && panels % 2 == 0 && full <= pxs ? full : Ce;
}

// Per-thread 64-byte aligned buffers, reused across calls. Slot 0: a band's row buffer and
// group output (worker threads); on the calling thread, which is also worker 0 (so none may
// share): slot 1 the squeeze-excite block's depthwise output, slot 2 the gate's sums, means,
// hidden units and gate, slot 3 the depthwise weights packed for this call.
enum Slot { kBandSlot, kDwOutSlot, kGateSlot, kDwPackSlot, kSlots };
// The first 64-byte boundary at or after p (p has 16 spare floats behind it).
float* align64(float* p) {
  return p + ((64 - reinterpret_cast<uintptr_t>(p) % 64) % 64) / sizeof(float);
}
float* thread_buffer(int slot, int64_t floats) {
  struct Buf {
    std::unique_ptr<float[]> base;
    int64_t cap = 0;
  };
  thread_local Buf bufs[kSlots];
  Buf& b = bufs[slot];
  if (b.cap < floats) {
    b.base.reset(new float[floats + 16]);
    b.cap = floats;
  }
  return align64(b.base.get());
}

// The depthwise weights (C, 1, KH, KW) and bias (C) or undefined, contiguous, in the row
// kernels' tile format (dw_band_packed_floats(C, KH * KW, kt.lanes) floats at dst).
void dw_pack(const KernelTable& kt, int64_t C, int64_t KH, int64_t KW, const at::Tensor& w,
             const at::Tensor& bias, float* dst) {
  DwBandArgs d{};
  d.p.C = C;
  d.p.KH = KH;
  d.p.KW = KW;
  d.w = w.const_data_ptr<float>();
  d.b = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  kt.dw_band_pack(d, dst);
}

struct Block {
  int64_t N, Cin, H, W, Ce, Cout, OH, OW;
  DwConvParams p;          // the depthwise conv on the expanded tensor (C = Ce)
  int expand_act, dw_act;
  const float* x;          // (N, H, W, Cin)
  const float* expand;     // packed (Ce panels, Cin + 1) or null: the buffer copies x's rows
  const float* project;    // packed (Cout panels, Ce + 1)
  bool residual;
  float* out;              // (N, OH, OW, Cout)
  bool stream;             // the output is written with streaming stores (PwArgs::stream)
  const float* dw_packed;  // dw_band_pack's output
  // Two-phase blocks (squeeze-excite, or channels split over threads): phase 1 writes the
  // depthwise output here, phase 2 projects it.
  float* dw_out;           // (N, OH, OW, Ce) or null: each group is projected at once
  // Squeeze-excite with whole samples as items (batch >= threads): a thread keeps a sample's
  // depthwise output in its own buffer (L2), computes that sample's gate and projects it; no
  // phase 2, no barrier. An item is se_chunk consecutive samples, whose gates are computed
  // together (each squeeze-excite weight read once for them).
  bool se_per_sample;
  int64_t se_chunk;
  const float *w1, *b1, *w2, *b2;
  int64_t R;
  bool in_place;           // no expand conv, and depthwise kernels that read x's rows in place
  // Buffer rows are the image's columns only (no padding columns): the depthwise kernels skip
  // the padding themselves, and consecutive expanded rows are one GEMM call.
  bool unpadded;
  // Row buffer geometry.
  int64_t G;               // output rows per group
  int64_t Wp, Wv, rowp;    // buffer row: Wp pixels, image columns [0, Wv) at PW..; rowp floats
  int64_t pxs;             // floats per buffer pixel (buffer_pixel_stride)
  int64_t ce_out;          // channels the expand conv writes per pixel (expand_columns)
  int64_t min_rows, cap;   // rows a group needs; rows the buffer holds
};

// A thread's band buffer: the row buffer, then the depthwise output of a group of rows (of
// se_chunk whole samples where se_per_sample; none in two-phase blocks), then the gate's
// scratch (sums, gates and hidden units of a chunk).
struct BandBuffer {
  float *ring, *group, *tmp;
};
BandBuffer band_buffer(const Block& b) {
  const int64_t sample_floats = b.OH * b.OW * b.Ce;
  const int64_t group_floats = b.se_per_sample ? b.se_chunk * sample_floats
                               : b.dw_out == nullptr ? b.G * b.OW * b.Ce
                                                     : 0;
  const int64_t tmp_floats = (b.se_per_sample ? b.se_chunk : 1) * (2 * b.Ce + b.R) + 48;
  BandBuffer buf;
  buf.ring = thread_buffer(kBandSlot, b.cap * b.rowp + group_floats + tmp_floats);
  buf.group = buf.ring + b.cap * b.rowp;
  buf.tmp = buf.group + group_floats;
  return buf;
}

// Output rows [oa, ob) of sample n, expanded channels [c0, c1) (one work item). c0 is a
// multiple of kChannelStep; c1 too, or Ce. Where se_per_sample, the whole sample's depthwise
// output goes to slot `slot` of the band buffer's group and its channel sums to sums (the
// gate and the projection follow in project_samples).
void run_band(const Block& b, int64_t n, int64_t oa, int64_t ob, int64_t c0, int64_t c1,
              float* sums, int64_t slot = 0) {
  const KernelTable& kt = kernels();
  const PointwiseKernels& pk = pointwise_kernels();
  const DwConvParams& p = b.p;
  const int64_t Ce = b.Ce, OW = b.OW;
  const bool per_sample = b.se_per_sample;  // then [oa, ob) is the whole sample
  const BandBuffer buf = band_buffer(b);
  float* ring = buf.ring;
  float* group = buf.group + slot * b.OH * OW * Ce;
  float* tmp = buf.tmp;
  // The padding columns of every padded buffer row are zeros; the expansion writes only
  // [PW, PW + Wv).
  const int64_t left = std::min(p.PW, b.Wp), right0 = std::min(b.Wp, p.PW + b.Wv);
  for (int64_t r = 0; r < (b.in_place || b.unpadded ? 0 : b.cap); ++r) {
    float* row = ring + r * b.rowp;
    std::memset(row, 0, left * b.pxs * sizeof(float));
    std::memset(row + right0 * b.pxs, 0, (b.Wp - right0) * b.pxs * sizeof(float));
  }
  if (sums != nullptr) std::fill(sums + c0, sums + c1, 0.0f);

  PwArgs e{};
  e.N = 1;
  e.HW = b.Wv;
  e.K = b.Cin;
  e.Cout = b.ce_out;
  e.act = b.expand_act;
  e.packed = b.expand;
  e.col_lo = c0;
  e.col_hi = c1 == Ce ? b.ce_out : c1;
  e.ldy = b.pxs;
  const int64_t p0 = c0 / kPanel, p1 = pointwise_panels(c1), Po = pointwise_panels(b.Cout);
  const int64_t lanes = kt.lanes;

  DwBandArgs d{};
  d.p = p;
  d.act = b.dw_act;
  d.wpk = b.dw_packed;
  d.frame = ring;
  d.rowp = b.rowp;
  d.pxs = b.pxs;
  d.ldy = OW * Ce;
  d.t0 = c0 / lanes;
  d.t1 = cdiv(c1, lanes);
  // Squeeze-excite: the channel sums accumulated by the depthwise kernels as they store, where
  // the shape has compile-time kernels; else a pass over each group's output below. Batch 8 on
  // 2 threads, alternating, with / without: Large's blocks 3, 4, 5 646 / 681, 624 / 675,
  // 606 / 644 us, block 11 1709 / 1758.
  d.sums = sums != nullptr && (b.unpadded || b.in_place) ? sums : nullptr;

  PwArgs o{};
  o.N = 1;
  o.K = Ce;
  o.Cout = b.Cout;
  o.act = 0;
  o.packed = b.project;
  o.stream = b.stream;

  const int64_t span_h = (p.KH - 1) * p.DH + 1;
  int64_t buf_lo = oa * p.SH - p.PH;  // image row of buffer row 0
  int64_t filled = buf_lo;            // image rows [buf_lo, filled) are in the buffer
  if (b.in_place) {  // no expand conv: the depthwise reads x's rows where they are
    d.frame = b.x + n * b.H * b.W * b.Cin;
    d.rowp = b.W * b.Cin;
    d.pxs = b.Cin;
    d.valid_lo = 0;
    d.valid_hi = b.H;
  }
  if (b.in_place || b.unpadded) {  // the kernels skip the padding columns
    d.col0 = -p.PW;
    d.cols = b.W;
  }
  for (int64_t oy0 = oa; oy0 < ob; oy0 += b.G) {
    const int64_t g = std::min(b.G, ob - oy0);
    const int64_t lo = oy0 * p.SH - p.PH, hi = lo + (g - 1) * p.SH + span_h;
    if (b.in_place) {
      d.first = lo;
    } else if (hi - buf_lo > b.cap) {  // slide: keep rows [lo, filled) at the front
      const int64_t keep = std::max<int64_t>(0, filled - lo);
      if (keep > 0) {
        std::memmove(ring, ring + (lo - buf_lo) * b.rowp, keep * b.rowp * sizeof(float));
      }
      buf_lo = lo;
      filled = std::max(filled, lo);
    }
    if (b.unpadded) {  // the new image rows, one GEMM call (they are consecutive in x and here)
      const int64_t ra = std::max<int64_t>({filled, lo, 0}), rb = std::min(hi, b.H);
      if (ra < rb) {
        e.x = b.x + ((n * b.H + ra) * b.W) * b.Cin;
        e.y = ring + (ra - buf_lo) * b.rowp;
        e.HW = (rb - ra) * b.W;
        pk.nhwc(e, 0, 0, e.HW, p0, p1, nullptr);
      }
    }
    for (int64_t iy = std::max(filled, lo); iy < hi && !b.in_place && !b.unpadded; ++iy) {
      if (iy < 0 || iy >= b.H || b.Wv == 0) continue;  // padding rows are never read
      const float* src = b.x + ((n * b.H + iy) * b.W) * b.Cin;
      float* dst = ring + (iy - buf_lo) * b.rowp + p.PW * b.pxs;
      if (b.expand != nullptr) {
        e.x = src;
        e.y = dst;
        e.HW = b.Wv;
        pk.nhwc(e, 0, 0, b.Wv, p0, p1, nullptr);
      } else if (c1 - c0 == Ce) {
        std::memcpy(dst, src, b.Wv * Ce * sizeof(float));
      } else {
        for (int64_t q = 0; q < b.Wv; ++q) {
          std::memcpy(dst + q * Ce + c0, src + q * Ce + c0, (c1 - c0) * sizeof(float));
        }
      }
    }
    filled = std::max(filled, hi);

    if (!b.in_place) {
      d.first = lo - buf_lo;
      d.valid_lo = -buf_lo;
      d.valid_hi = b.H - buf_lo;
    }
    d.rows = g;
    d.y = b.dw_out != nullptr ? b.dw_out + ((n * b.OH + oy0) * OW) * Ce
          : per_sample         ? group + oy0 * OW * Ce
                               : group;
    kt.dw_band(d);

    if (b.dw_out != nullptr || per_sample) {  // the projection comes after the last row
      if (sums != nullptr && d.sums == nullptr) {  // squeeze-excite: sum the rows in cache
        kt.se_pixel_sums(d.y, tmp, Ce, g * OW, c0, c1);
        for (int64_t c = c0; c < c1; ++c) sums[c] += tmp[c];
      }
      continue;
    }
    o.HW = g * OW;
    o.x = group;
    o.y = b.out + ((n * b.OH + oy0) * OW) * b.Cout;
    o.residual = b.residual ? b.x + ((n * b.H + oy0) * b.W) * b.Cin : nullptr;
    pk.nhwc(o, 0, 0, g * OW, 0, Po, nullptr);
  }
}

// Samples [n0, n0 + count) of a se_per_sample block, after run_band put them in slots
// [0, count) of this thread's band buffer and their channel sums (count x Ce) in sums: their
// gates (fc1 + relu -> fc2 + hardsigmoid on the channel means, every weight row read once for
// the chunk), then each sample's projection with its gate folded in, while its depthwise output
// is in this core's cache.
void project_samples(const Block& b, int64_t n0, int64_t count, const float* sums) {
  const KernelTable& kt = kernels();
  const PointwiseKernels& pk = pointwise_kernels();
  const int64_t Ce = b.Ce, HW = b.OH * b.OW;
  const int64_t Po = pointwise_panels(b.Cout);
  const BandBuffer buf = band_buffer(b);
  float* gate = buf.tmp;
  float* hidden = gate + count * Ce;
  kt.se_fc1(sums, 1.0f / static_cast<float>(HW), b.w1, b.b1, hidden, count, Ce, b.R, 0, b.R);
  kt.se_fc2(hidden, b.w2, b.b2, gate, count, Ce, b.R, 0, Ce);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = n0 + i;
    PwArgs o{};
    o.N = 1;
    o.HW = HW;
    o.K = Ce;
    o.Cout = b.Cout;
    o.act = 0;
    o.packed = b.project;
    o.stream = b.stream;
    o.x = buf.group + i * HW * Ce;
    o.y = b.out + n * HW * b.Cout;
    o.residual = b.residual ? b.x + n * b.H * b.W * b.Cin : nullptr;
    if (gate_in_weights(b.Cout, HW)) {
      float* scaled = gemm_thread_scratch(Po * pointwise_panel_floats(Ce));
      pk.scale_panels(b.project, gate + i * Ce, Ce, Po, scaled);
      o.packed = scaled;
      pk.nhwc(o, 0, 0, HW, 0, Po, nullptr);
    } else {
      o.scale = gate + i * Ce;
      pk.nhwc(o, 0, 0, HW, 0, Po, gemm_thread_scratch(pointwise_scratch_floats(Ce)));
    }
  }
}

void check_float(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
}

void check_packed(const char* op, const char* name, const at::Tensor& t, int64_t cout, int64_t k,
                  const at::Tensor& x) {
  const int64_t P = pointwise_panels(cout);
  TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == P && t.size(1) == k + 1 && t.size(2) == kPanel,
                    op, ": ", name, " must be (", P, ", ", k + 1, ", ", kPanel, ") for ", cout,
                    " output and ", k, " input channels (from mnv3::pack_pointwise_weight), got ",
                    t.sizes());
  check_float(op, name, t, x);
}

void check_shape(const char* op, const char* name, const at::Tensor& t,
                 std::initializer_list<int64_t> shape, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), op, ": ", name, " must be ",
                    at::IntArrayRef(shape), ", got ", t.sizes());
  check_float(op, name, t, x);
}

void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have 2 elements, got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min_value && v[1] >= min_value, op, ": ", name, " must be >= ",
                    min_value, ", got ", v);
}

}  // namespace

DwBandPacked pack_dw_band(const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias) {
  DwBandPacked out;
  const at::Tensor& w = dw_weight;
  if (!(w.defined() && w.dim() == 4 && w.size(1) == 1 && w.size(0) >= 1 && w.numel() > 0 &&
        w.scalar_type() == at::kFloat && w.device().is_cpu())) {
    return out;
  }
  const int64_t C = w.size(0), taps = w.size(2) * w.size(3);
  if (dw_bias.has_value() && !(dw_bias->scalar_type() == at::kFloat && dw_bias->device().is_cpu() &&
                               dw_bias->dim() == 1 && dw_bias->size(0) == C)) {
    return out;
  }
  const KernelTable& kt = kernels();
  const at::Tensor wc = w.contiguous();
  at::Tensor bc;
  if (dw_bias.has_value()) bc = dw_bias->contiguous();
  out.mem.reset(new float[dw_band_packed_floats(C, taps, kt.lanes) + 16]);
  float* data = align64(out.mem.get());
  dw_pack(kt, C, w.size(2), w.size(3), wc, bc, data);
  out.data = data;
  out.table = &kt;
  out.channels = C;
  out.taps = taps;
  return out;
}

at::Tensor inverted_residual_prepacked_cpu(
    const at::Tensor& x_in, const c10::optional<at::Tensor>& expand_packed, int64_t expand_channels,
    c10::string_view expand_activation, const at::Tensor& dw_weight_in,
    const c10::optional<at::Tensor>& dw_bias_in, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view dw_activation,
    const c10::optional<at::Tensor>& se_fc1_weight, const c10::optional<at::Tensor>& se_fc1_bias,
    const c10::optional<at::Tensor>& se_fc2_weight, const c10::optional<at::Tensor>& se_fc2_bias,
    const at::Tensor& project_packed, int64_t out_channels, bool residual,
    const DwBandPacked* dw_prepacked) {
  const char* op = "mnv3::inverted_residual_packed (CPU)";
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x_in.dim(), "-D");
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const int64_t N = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const Activation eact = parse_activation(expand_activation);
  const Activation dact = parse_activation(dw_activation);
  const bool has_expand = expand_packed.has_value();
  TORCH_CHECK_VALUE(has_expand || expand_channels == Cin, op,
                    ": without expand_packed, expand_channels must equal x's channels (", Cin,
                    "), got ", expand_channels);
  TORCH_CHECK_VALUE(expand_channels >= 1, op, ": expand_channels must be >= 1, got ",
                    expand_channels);
  const int64_t Ce = expand_channels;
  if (has_expand) check_packed(op, "expand_packed", *expand_packed, Ce, Cin, x_in);
  TORCH_CHECK_VALUE(dw_weight_in.dim() == 4 && dw_weight_in.size(0) == Ce &&
                        dw_weight_in.size(1) == 1 && dw_weight_in.size(2) >= 1 &&
                        dw_weight_in.size(3) >= 1,
                    op, ": dw_weight must be (", Ce, ", 1, kh, kw) for ", Ce,
                    " expanded channels, got ", dw_weight_in.sizes());
  check_float(op, "dw_weight", dw_weight_in, x_in);
  if (dw_bias_in.has_value()) check_shape(op, "dw_bias", *dw_bias_in, {Ce}, x_in);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  DwConvParams p{N, Ce, H, W, dw_weight_in.size(2), dw_weight_in.size(3), stride[0], stride[1],
                 padding[0], padding[1], dilation[0], dilation[1], 0, 0};
  const int64_t span_h = (p.KH - 1) * p.DH + 1, span_w = (p.KW - 1) * p.DW + 1;
  TORCH_CHECK_VALUE(H + 2 * p.PH >= span_h && W + 2 * p.PW >= span_w, op,
                    ": the depthwise kernel (", span_h, " x ", span_w,
                    " with dilation) is larger than the padded input (", H + 2 * p.PH, " x ",
                    W + 2 * p.PW, ")");
  p.OH = (H + 2 * p.PH - span_h) / p.SH + 1;
  p.OW = (W + 2 * p.PW - span_w) / p.SW + 1;
  const int nse = se_fc1_weight.has_value() + se_fc1_bias.has_value() + se_fc2_weight.has_value() +
                  se_fc2_bias.has_value();
  TORCH_CHECK_VALUE(nse == 0 || nse == 4, op,
                    ": se_fc1_weight, se_fc1_bias, se_fc2_weight and se_fc2_bias go together "
                    "(all four for a squeeze-excite block, none without), got ", nse);
  const bool has_se = nse == 4;
  int64_t R = 0;
  if (has_se) {
    TORCH_CHECK_VALUE(se_fc1_weight->dim() == 2 && se_fc1_weight->size(1) == Ce &&
                          se_fc1_weight->size(0) >= 1,
                      op, ": se_fc1_weight must be (R, ", Ce, "), got ", se_fc1_weight->sizes());
    R = se_fc1_weight->size(0);
    check_float(op, "se_fc1_weight", *se_fc1_weight, x_in);
    check_shape(op, "se_fc1_bias", *se_fc1_bias, {R}, x_in);
    check_shape(op, "se_fc2_weight", *se_fc2_weight, {Ce, R}, x_in);
    check_shape(op, "se_fc2_bias", *se_fc2_bias, {Ce}, x_in);
  }
  TORCH_CHECK_VALUE(out_channels >= 1, op, ": out_channels must be >= 1, got ", out_channels);
  check_packed(op, "project_packed", project_packed, out_channels, Ce, x_in);
  TORCH_CHECK_VALUE(!residual || (out_channels == Cin && p.OH == H && p.OW == W), op,
                    ": residual needs the output's shape to equal x's (", Cin, " x ", H, " x ", W,
                    "), but the block gives ", out_channels, " x ", p.OH, " x ", p.OW);

  at::Tensor out = at::empty({N, out_channels, p.OH, p.OW},
                             x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor dw_w = dw_weight_in.contiguous();
  at::Tensor dw_b, ep, pp, w1, b1, w2, b2;
  if (dw_bias_in.has_value()) dw_b = dw_bias_in->contiguous();
  if (has_expand) ep = expand_packed->contiguous();
  pp = project_packed.contiguous();
  if (has_se) {
    w1 = se_fc1_weight->contiguous();
    b1 = se_fc1_bias->contiguous();
    w2 = se_fc2_weight->contiguous();
    b2 = se_fc2_bias->contiguous();
  }

  const KernelTable& kt = kernels();
  Block b{};
  b.N = N;
  b.Cin = Cin;
  b.H = H;
  b.W = W;
  b.Ce = Ce;
  b.Cout = out_channels;
  b.OH = p.OH;
  b.OW = p.OW;
  b.p = p;
  b.expand_act = static_cast<int>(eact);
  b.dw_act = static_cast<int>(dact);
  b.x = x.const_data_ptr<float>();
  b.expand = has_expand ? ep.const_data_ptr<float>() : nullptr;
  b.project = pp.const_data_ptr<float>();
  b.residual = residual;
  b.out = out.mutable_data_ptr<float>();

  // The depthwise weights in the row kernels' tile format: a chain's, packed when it was built
  // for the kernels active now, or packed here.
  const int64_t taps = p.KH * p.KW;
  if (dw_prepacked != nullptr && dw_prepacked->data != nullptr && dw_prepacked->table == &kt &&
      dw_prepacked->channels == Ce && dw_prepacked->taps == taps) {
    b.dw_packed = dw_prepacked->data;
  } else {
    float* dw_packed = thread_buffer(kDwPackSlot, dw_band_packed_floats(Ce, taps, kt.lanes));
    dw_pack(kt, Ce, p.KH, p.KW, dw_w, dw_b, dw_packed);
    b.dw_packed = dw_packed;
  }

  b.in_place = !has_expand && kt.dw_band_in_place(p);
  b.unpadded = has_expand && kt.dw_band_in_place(p);
  b.Wp = b.unpadded ? W : (p.OW - 1) * p.SW + span_w;
  b.Wv = b.unpadded ? W : std::max<int64_t>(0, std::min(W, b.Wp - p.PW));
  b.pxs = has_expand ? buffer_pixel_stride(Ce) : Ce;
  b.ce_out = expand_columns(Ce, b.pxs);
  b.rowp = b.Wp * b.pxs;
  b.G = std::max<int64_t>(1, std::min(p.OH, cdiv(kGroupPixels, p.OW)));
  while (b.G > 1 && !b.in_place && ((b.G - 1) * p.SH + span_h) * b.rowp > kBufferFloats) --b.G;
  b.min_rows = (b.G - 1) * p.SH + span_h;

  const int64_t macs =
      N * (H * W * Cin * (has_expand ? Ce : 0) + p.OH * p.OW * Ce * (taps + out_channels));
  const int64_t threads =
      (at::in_parallel_region() || macs < kSerialMacs) ? 1 : at::get_num_threads();
  b.stream = stream_output(out.numel() * static_cast<int64_t>(sizeof(float)), threads);
  // Bands per sample: enough items for every thread to get the same number (batch 1: one band
  // per thread; batch 8 on 2 threads: whole samples).
  const int64_t bands = std::min(p.OH, threads / std::gcd(N, threads));
  // Each band expands the rows its first output row reaches above it a second time; where those
  // rows are more than a sixth of the image (14x14 with k = 5, 7x7) the threads split the
  // expanded channels instead, each running its channels over the whole image, and the
  // projection follows as a second phase over all channels (a barrier, and each thread reads
  // the other's depthwise output). Measured at batch 1 on 2 threads, bands against channel
  // parts: 3x3 at 14x14 (2 of 14 rows again) 4-10% faster, k = 5 at 28x28 (4 of 28) 18-20%
  // faster; k = 5 stride 2 at 14x14 (3 of 14) 15% slower, k = 5 at 7x7 20% slower.
  const int64_t steps = cdiv(Ce, kChannelStep);
  const bool by_channels =
      bands > 1 && (bands - 1) * std::max<int64_t>(0, span_h - p.SH) * 6 > H && steps >= threads;
  const int64_t items = by_channels ? N * threads : N * bands;
  const int64_t band_rows = by_channels ? p.OH : cdiv(p.OH, bands);
  const int64_t band_need = (band_rows - 1) * p.SH + span_h;
  b.cap = std::max(b.min_rows, std::min(band_need, kBufferFloats / std::max<int64_t>(1, b.rowp)));

  float *sums = nullptr, *pooled = nullptr, *hidden = nullptr, *gate = nullptr;
  b.se_per_sample = has_se && bands == 1 && !by_channels;
  b.se_chunk = 1;
  if (b.se_per_sample) {
    const int64_t sample_bytes = p.OH * p.OW * Ce * static_cast<int64_t>(sizeof(float));
    const int64_t se_bytes = 2 * Ce * R * static_cast<int64_t>(sizeof(float));
    if (se_bytes > sample_bytes) {
      b.se_chunk = std::max<int64_t>(1, std::min(N / threads, kSeChunkBytes / sample_bytes));
    }
  }
  // One sample with its channels split: each thread projects the channels it holds (a partial
  // sum over part of K, the gate of its own channels folded in) and the partial sums are added
  // up, rather than every thread reading the other's depthwise output from its core's cache
  // (and waiting for the whole gate). Measured on 2 threads, weights out of cache: Large's 7x7
  // blocks 401 -> 387 and 439 -> 413 us (median), its 14x14 stride-2 block 559 -> 552.
  // Thread 0's sum starts from the bias and is written to out; the others' go to scratch and
  // are added in thread order, so the output does not depend on timing.
  const bool k_split = by_channels && N == 1;
  const int64_t out_px = p.OH * p.OW;
  float* partials = nullptr;
  if (has_se) {
    b.w1 = w1.const_data_ptr<float>();
    b.b1 = b1.const_data_ptr<float>();
    b.w2 = w2.const_data_ptr<float>();
    b.b2 = b2.const_data_ptr<float>();
    b.R = R;
  }
  if ((has_se && !b.se_per_sample) || by_channels) {
    const int64_t dw_floats = cdiv(N * out_px * Ce, 16) * 16;
    b.dw_out = thread_buffer(kDwOutSlot,
                             dw_floats + (k_split ? (threads - 1) * out_px * out_channels : 0));
    partials = b.dw_out + dw_floats;
  }
  if (has_se) {  // items x Ce sums (zero where an item has no channels), N x Ce means, ...
    sums = thread_buffer(kGateSlot, (items + 2 * N) * Ce + N * R + 3 * 16);
    std::fill(sums, sums + items * Ce, 0.0f);
    pooled = sums + cdiv(items * Ce, 16) * 16;
    gate = pooled + cdiv(N * Ce, 16) * 16;
    hidden = gate + cdiv(N * Ce, 16) * 16;
  }
  const int64_t per_n = items / N;  // items of a sample: row bands, or channel parts
  const float inv_hw = 1.0f / static_cast<float>(p.OH * p.OW);
  PwArgs o{};  // phase 2: the projection of the depthwise output (+ x)
  o.N = N;
  o.HW = p.OH * p.OW;
  o.K = Ce;
  o.Cout = out_channels;
  o.act = 0;
  o.x = b.dw_out;
  o.y = b.out;
  o.packed = b.project;
  o.residual = residual ? b.x : nullptr;
  o.scale = gate;
  o.stream = b.stream;
  const int64_t Po = pointwise_panels(out_channels);
  const bool fold_gate = has_se && N == 1 && gate_in_weights(out_channels, out_px);

  // Every phase split over the threads of one parallel region, with barriers between: a
  // fork/join per phase (up to five for a squeeze-excite block) costs more than a phase of a
  // batch-1 block.
  // Items: thread tid's first is item tid (at batch 1, the band whose rows its phase 2
  // projects), then each takes the next unclaimed one, so a thread that loses its core for a
  // while on a shared host does not hold up the block. Large at batch 8, 2 threads, alternating
  // in one process: median 51.1 -> 43.5 ms while the host was contended, 34.96 -> 34.97 ms when
  // it was not (a fixed split gave each thread 4 of the 8 samples).
  std::atomic<int64_t> claimed{0};
  auto part_channels = [&](int64_t part, int64_t& c0, int64_t& c1) {
    c0 = steps * part / threads * kChannelStep;
    c1 = std::min(Ce, steps * (part + 1) / threads * kChannelStep);
  };
  auto phases = [&](int tid, int nt, const auto& barrier) {
    if (b.se_per_sample) {  // items of se_chunk samples, each sample's sums at sums + n * Ce
      const int64_t chunks = cdiv(N, b.se_chunk);
      for (int64_t i = tid; i < chunks; i = nt + claimed.fetch_add(1)) {
        const int64_t n0 = i * b.se_chunk, count = std::min(b.se_chunk, N - n0);
        for (int64_t j = 0; j < count; ++j) {
          run_band(b, n0 + j, 0, p.OH, 0, Ce, sums + (n0 + j) * Ce, j);
        }
        project_samples(b, n0, count, sums + n0 * Ce);
      }
      return;
    }
    for (int64_t i = tid; i < items; i = nt + claimed.fetch_add(1)) {
      float* item_sums = has_se ? sums + i * Ce : nullptr;
      if (by_channels) {
        const int64_t n = i / threads, part = i % threads;
        int64_t c0, c1;
        part_channels(part, c0, c1);
        if (c0 < c1) run_band(b, n, 0, p.OH, c0, c1, item_sums);
      } else {
        const int64_t n = i / bands, band = i % bands;
        const int64_t oa = p.OH * band / bands, ob = p.OH * (band + 1) / bands;
        if (oa < ob) run_band(b, n, oa, ob, 0, Ce, item_sums);
      }
    }
    if (b.dw_out == nullptr) return;
    barrier();
    // Thread tid ran part tid (one sample: items == threads, and none is left to claim).
    const bool own_part = k_split && nt == threads;
    int64_t k0 = 0, k1 = 0;
    if (own_part) part_channels(tid, k0, k1);
    if (has_se) {
      // The gate: channel means of the depthwise output -> fc1 + relu -> fc2 + hardsigmoid.
      int64_t j0, j1;
      split(N * Ce, tid, nt, j0, j1);
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t n = j / Ce, c = j % Ce;
        float acc = 0.0f;
        for (int64_t it = n * per_n; it < (n + 1) * per_n; ++it) acc += sums[it * Ce + c];
        pooled[j] = acc;
      }
      barrier();
      split(R, tid, nt, j0, j1);
      kt.se_fc1(pooled, inv_hw, w1.const_data_ptr<float>(), b1.const_data_ptr<float>(), hidden,
                N, Ce, R, j0, j1);
      barrier();
      split(Ce, tid, nt, j0, j1);
      if (own_part) {  // the gate of this thread's channels is all its projection needs
        j0 = k0;
        j1 = k1;
      }
      kt.se_fc2(hidden, w2.const_data_ptr<float>(), b2.const_data_ptr<float>(), gate, N, Ce, R,
                j0, j1);
      if (!own_part) barrier();
    }
    if (!own_part && fold_gate) {
      // One sample: its gate in the weights, as run_band does. Every thread scales its own
      // copy into its GEMM scratch, which an unscaled call leaves alone.
      PwArgs q = o;
      float* scaled = gemm_thread_scratch(Po * pointwise_panel_floats(Ce));
      pointwise_kernels().scale_panels(b.project, gate, Ce, Po, scaled);
      q.packed = scaled;
      q.scale = nullptr;
      return pointwise_nhwc_part(q, tid, nt);
    }
    if (!own_part) return pointwise_nhwc_part(o, tid, nt);
    PwArgs q = o;
    q.K = k1 - k0;
    q.lda = Ce;
    q.x = b.dw_out + k0;
    q.packed = b.project + k0 * kPanel;  // its channel k0 row is then where channel 0's is
    q.panel_stride = pointwise_panel_floats(Ce);
    q.scale = has_se ? gate + k0 : nullptr;
    q.scale_stride = Ce;
    q.no_bias = tid > 0;
    q.residual = nullptr;
    q.stream = false;
    q.y = tid == 0 ? b.out : partials + (tid - 1) * out_px * out_channels;
    // Every part has channels (channel parts need at least one kChannelStep per thread).
    pointwise_kernels().nhwc(q, 0, 0, out_px, 0, pointwise_panels(out_channels),
                             gemm_thread_scratch(pointwise_scratch_floats(q.K)));
    barrier();
    int64_t r0, r1;
    split(out_px, tid, nt, r0, r1);
    for (int64_t r = r0; r < r1; ++r) {
      float* y = b.out + r * out_channels;
      for (int t = 1; t < nt; ++t) {
        const float* part = partials + ((t - 1) * out_px + r) * out_channels;
        for (int64_t c = 0; c < out_channels; ++c) y[c] += part[c];
      }
      if (residual) {
        const float* xr = b.x + r * Cin;
        for (int64_t c = 0; c < out_channels; ++c) y[c] += xr[c];
      }
    }
  };
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(static_cast<int>(threads))
    phases(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
    });
    return out;
  }
#endif
  phases(0, 1, [] {});
  return out;
}

at::Tensor inverted_residual_packed_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& expand_packed, int64_t expand_channels,
    c10::string_view expand_activation, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view dw_activation,
    const c10::optional<at::Tensor>& se_fc1_weight, const c10::optional<at::Tensor>& se_fc1_bias,
    const c10::optional<at::Tensor>& se_fc2_weight, const c10::optional<at::Tensor>& se_fc2_bias,
    const at::Tensor& project_packed, int64_t out_channels, bool residual) {
  return inverted_residual_prepacked_cpu(x, expand_packed, expand_channels, expand_activation,
                                         dw_weight, dw_bias, stride, padding, dilation,
                                         dw_activation, se_fc1_weight, se_fc1_bias, se_fc2_weight,
                                         se_fc2_bias, project_packed, out_channels, residual,
                                         nullptr);
}

at::Tensor pack_pointwise_weight(const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

namespace {

// A 1x1 conv weight as (Cout, K), checked against the K it must have.
at::Tensor weight_1x1(const char* op, const char* name, const at::Tensor& w, int64_t k,
                      const char* k_from, const at::Tensor& x) {
  TORCH_CHECK_VALUE((w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) &&
                        w.size(0) >= 1,
                    op, ": ", name, " must be (Cout, Cin) or (Cout, Cin, 1, 1), got ", w.sizes());
  TORCH_CHECK_VALUE(w.size(1) == k, op, ": ", name, " has ", w.size(1), " input channels but ",
                    k_from, " has ", k);
  check_float(op, name, w, x);
  return w.reshape({w.size(0), w.size(1)});
}

}  // namespace

// The functional form: packs the 1x1 weights on every call, then runs the packed block.
at::Tensor inverted_residual_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, c10::string_view expand_activation,
    const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view dw_activation,
    const c10::optional<at::Tensor>& se_fc1_weight, const c10::optional<at::Tensor>& se_fc1_bias,
    const c10::optional<at::Tensor>& se_fc2_weight, const c10::optional<at::Tensor>& se_fc2_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias,
    bool residual) {
  const char* op = "mnv3::inverted_residual (CPU)";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(expand_weight.has_value() || !expand_bias.has_value(), op,
                    ": expand_bias given without expand_weight");
  c10::optional<at::Tensor> ep;
  int64_t ce = x.size(1);
  if (expand_weight.has_value()) {
    const at::Tensor w = weight_1x1(op, "expand_weight", *expand_weight, x.size(1), "x", x);
    ce = w.size(0);
    if (expand_bias.has_value()) check_shape(op, "expand_bias", *expand_bias, {ce}, x);
    ep = pack_pointwise_weight(w, expand_bias);
  }
  const at::Tensor pw = weight_1x1(op, "project_weight", project_weight, ce,
                                   expand_weight.has_value() ? "the expansion" : "x", x);
  if (project_bias.has_value()) check_shape(op, "project_bias", *project_bias, {pw.size(0)}, x);
  return inverted_residual_packed_cpu(x, ep, ce, expand_activation, dw_weight, dw_bias, stride,
                                      padding, dilation, dw_activation, se_fc1_weight, se_fc1_bias,
                                      se_fc2_weight, se_fc2_bias,
                                      pack_pointwise_weight(pw, project_bias), pw.size(0),
                                      residual);
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("inverted_residual", &inverted_residual_cpu);
  m.impl("inverted_residual_packed", &inverted_residual_packed_cpu);
}

}  // namespace cpu
}  // namespace mnv3
