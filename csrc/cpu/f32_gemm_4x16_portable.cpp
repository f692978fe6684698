// Portable pointwise (1x1) conv kernels: register tiles of 4 rows x 16 floats, as 8-float arrays
// that the compiler vectorizes for the baseline ISA of the build. Correct everywhere, not tuned.
#include <cstdint>

#include "pointwise.h"

namespace mnv3 {
namespace cpu {
namespace {

struct vf {
  float v[8];
};
constexpr int VL = 8;
constexpr int MR = 4;
constexpr int NV = 2;

inline vf vload(const float* p) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore(float* p, vf a) {
  for (int i = 0; i < 8; ++i) p[i] = a.v[i];
}
inline vf vset1(float s) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = s;
  return r;
}
inline vf vzero() { return vset1(0.0f); }
inline vf vfma(vf a, vf b, vf c) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
  return r;
}
inline vf vadd(vf a, vf b) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] + b.v[i];
  return r;
}
inline vf vmul(vf a, vf b) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i];
  return r;
}
// Second operand when the comparison fails, NaN included (as the x86 instructions).
inline vf vmax(vf a, vf b) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
  return r;
}
inline vf vmin(vf a, vf b) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i];
  return r;
}
inline vf vload_n(const float* p, int n) {
  vf r = vzero();
  for (int i = 0; i < n; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore_n(float* p, vf a, int n) {
  for (int i = 0; i < n; ++i) p[i] = a.v[i];
}

#include "f32_gemm_impl.h"

}  // namespace

const PointwiseKernels& pointwise_portable() { return kPointwise; }

}  // namespace cpu
}  // namespace mnv3
