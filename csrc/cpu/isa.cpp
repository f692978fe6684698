#include "isa.h"

#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

namespace mnv3 {
namespace cpu {

Isa best_supported_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has_avx2 ? Isa::Avx2 : Isa::Portable;
#else
  return Isa::Portable;
#endif
}

static Isa initial_isa() {
  const char* env = std::getenv("MNV3_CPU_ISA");
  if (env != nullptr && *env != '\0') {
    Isa wanted = parse_isa(env);
    if (wanted == Isa::Avx2 && best_supported_isa() != Isa::Avx2) return Isa::Portable;
    return wanted;
  }
  return best_supported_isa();
}

static std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  TORCH_CHECK_VALUE(isa != Isa::Avx2 || best_supported_isa() == Isa::Avx2,
                    "this CPU does not support AVX2+FMA");
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

Isa parse_isa(const std::string& name) {
  if (name == "avx2") return Isa::Avx2;
  if (name == "portable") return Isa::Portable;
  TORCH_CHECK_VALUE(false, "CPU ISA must be 'avx2' or 'portable', got '", name, "'");
}

const char* isa_name(Isa isa) { return isa == Isa::Avx2 ? "avx2" : "portable"; }

}  // namespace cpu
}  // namespace mnv3
