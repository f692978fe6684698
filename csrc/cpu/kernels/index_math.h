// int64 index arithmetic of the kernels. Included inside a per-ISA translation unit's anonymous
// namespace (see simd/portable.h), like every kernels/ header. Indices are int64_t throughout: a
// channels_last tensor of a few GB overflows 32-bit offsets.
#pragma once

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }
