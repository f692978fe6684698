// Run-time choice of the CPU instruction set: the AVX2+FMA and AVX-512 kernels are used only
// where the CPU has them, so one build runs on any x86-64 (and on other architectures,
// portably).
#pragma once

#include <string>

namespace mnv3 {
namespace cpu {

// Ordered: a CPU that supports one supports all before it.
enum class Isa { Portable, Avx2, Avx512 };

Isa best_supported_isa();
Isa active_isa();            // best supported, unless overridden by set_isa / MNV3_CPU_ISA
void set_isa(Isa isa);       // throws if the CPU lacks it
Isa parse_isa(const std::string& name);
const char* isa_name(Isa isa);

}  // namespace cpu
}  // namespace mnv3
