// The 64-byte aligned scratch of the depthwise kernels. Included inside a per-ISA translation
// unit's anonymous namespace (see simd/portable.h), like every kernels/ header.
#pragma once

// n floats, 64-byte aligned: vector loads of the scratch never split a cache line.
struct AlignedScratch {
  float* base;
  float* data;
  explicit AlignedScratch(int64_t n) : base(new float[n + 16]) {
    const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(base) / sizeof(float) % 16);
    data = base + (16 - mis) % 16;
  }
  ~AlignedScratch() { delete[] base; }
  AlignedScratch(const AlignedScratch&) = delete;
  AlignedScratch& operator=(const AlignedScratch&) = delete;
};
