// Portable vector primitives: 8-float vectors as plain arrays that the compiler vectorizes for
// whatever baseline ISA the library is built for. Not a normal header: a translation unit
// (kernels/*_portable.cpp) includes it inside `namespace mnv3::cpu::portable { namespace {`,
// then the kernel headers that use it.
//
// Every ISA's header provides the same names: the vector type `vf` of VL floats, kVecRegs
// (vector registers of the ISA), kShapeKernels (whether to instantiate the compile-time-shape
// depthwise kernels, kernels/dwconv_shapes.h, or only the run-time-shape ones) and vload, vstore,
// vload_n, vload_span, vstore_n, vstream, vstream_fence, vkeep, vset1, vzero, vfma, vadd, vmul,
// vmax, vmin, vhsum, vdeinterleave2, vtranspose. The kernel headers must not instantiate any
// std:: template (those are shared between translation units and could be emitted with a wider
// ISA).
struct vf {
  float v[8];
};
constexpr int VL = 8;
static_assert(VL == kLanes, "kernels.h and simd/portable.h disagree on the vector width");
constexpr int kVecRegs = 16;
// The fallback only needs to be correct and reasonable: run-time shapes keep its build short.
constexpr bool kShapeKernels = false;

inline vf vload(const float* p) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore(float* p, vf a) {
  for (int i = 0; i < 8; ++i) p[i] = a.v[i];
}
// No portable non-temporal store: a plain one.
inline void vstream(float* p, vf a) { vstore(p, a); }
inline void vstream_fence() {}
inline vf vset1(float s) {
  vf r;
  for (int i = 0; i < 8; ++i) r.v[i] = s;
  return r;
}
inline vf vzero() { return vset1(0.0f); }
inline vf vkeep(vf v) { return v; }
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
// Like maxps/minps: b when either is NaN (kernels/f32_activation.h orders the clamps on this).
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
// Lanes past n read as 0 and are not written: partial tiles stay inside the tensor.
inline vf vload_n(const float* p, int n) {
  vf r = vzero();
  for (int i = 0; i < n; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore_n(float* p, vf a, int n) {
  for (int i = 0; i < n; ++i) p[i] = a.v[i];
}
inline float vhsum(vf a) {
  return ((a.v[0] + a.v[4]) + (a.v[2] + a.v[6])) + ((a.v[1] + a.v[5]) + (a.v[3] + a.v[7]));
}
inline vf vload_span(const float* p, int lo, int hi) {
  vf r = vzero();
  for (int i = lo; i < hi; ++i) r.v[i] = p[i];
  return r;
}
inline void vdeinterleave2(vf a, vf b, vf& even, vf& odd) {
  for (int i = 0; i < 4; ++i) {
    even.v[i] = a.v[2 * i];
    odd.v[i] = a.v[2 * i + 1];
    even.v[4 + i] = b.v[2 * i];
    odd.v[4 + i] = b.v[2 * i + 1];
  }
}

inline void vtranspose(vf* v) {
  for (int i = 0; i < 8; ++i) {
    for (int j = i + 1; j < 8; ++j) {
      const float t = v[i].v[j];
      v[i].v[j] = v[j].v[i];
      v[j].v[i] = t;
    }
  }
}

