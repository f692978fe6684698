// int64 index arithmetic of the kernels. Included inside a per-ISA translation unit's anonymous
// namespace (see simd/portable.h), like every kernels/ header. Indices are int64_t throughout: a
// channels_last tensor of a few GB overflows 32-bit offsets.
#pragma once

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The taps [kh0, kh1) of a KH-tap kernel (dilation DH) whose first tap is on row r0 that land on
// rows [lo, hi); the others read padding. kh1 >= kh0.
inline void tap_rows(int64_t r0, int64_t lo, int64_t hi, int64_t KH, int64_t DH,
                     int64_t& kh0, int64_t& kh1) {
  kh0 = r0 >= lo ? 0 : div_up(lo - r0, DH);
  kh1 = imax(kh0, r0 > hi - 1 ? 0 : imin(KH, (hi - 1 - r0) / DH + 1));
}
