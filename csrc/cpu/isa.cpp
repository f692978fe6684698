#include "isa.h"

#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

namespace mnv3 {
namespace cpu {

Isa best_supported_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const Isa best = [] {
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && __builtin_cpu_supports("avx512f")) return Isa::Avx512;
    return avx2 ? Isa::Avx2 : Isa::Portable;
  }();
  return best;
#else
  return Isa::Portable;
#endif
}

static Isa initial_isa() {
  const char* env = std::getenv("MNV3_CPU_ISA");
  const Isa best = best_supported_isa();
  if (env == nullptr || *env == '\0') return best;
  // A name that is no ISA (mnv3_kernels/_extension.py warns about it) or a wish the CPU cannot
  // grant falls back to the best it can do: an environment variable must not break the import.
  Isa wanted;
  try {
    wanted = parse_isa(env);
  } catch (const c10::ValueError&) {
    return best;
  }
  return static_cast<int>(wanted) <= static_cast<int>(best) ? wanted : best;
}

static std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  TORCH_CHECK_VALUE(static_cast<int>(isa) <= static_cast<int>(best_supported_isa()),
                    "this CPU does not support ", isa_name(isa), " (best: ",
                    isa_name(best_supported_isa()), ")");
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

Isa parse_isa(const std::string& name) {
  if (name == "avx512") return Isa::Avx512;
  if (name == "avx2") return Isa::Avx2;
  if (name == "portable") return Isa::Portable;
  TORCH_CHECK_VALUE(false, "CPU ISA must be 'avx512', 'avx2' or 'portable', got '", name, "'");
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace cpu
}  // namespace mnv3
