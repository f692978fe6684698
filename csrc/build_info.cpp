#include "build_info.h"

#include <torch/version.h>

#include "cpu/isa.h"

#ifndef MNV3_VERSION
#define MNV3_VERSION "unknown"
#endif
#ifndef MNV3_CUDA_ARCH_LIST
#define MNV3_CUDA_ARCH_LIST ""
#endif

namespace mnv3 {

std::map<std::string, std::string> build_info() {
  std::map<std::string, std::string> info;
  info["version"] = MNV3_VERSION;
  info["torch_version"] = TORCH_VERSION;
#ifdef MNV3_WITH_CUDA
  info["cuda_built"] = "true";
  info["cuda_arch_list"] = MNV3_CUDA_ARCH_LIST;
#else
  info["cuda_built"] = "false";
#endif
#ifdef _OPENMP
  info["openmp"] = "true";
#else
  info["openmp"] = "false";
#endif
  info["cpu_isa"] = cpu::isa_name(cpu::active_isa());
  info["cpu_isa_supported"] = cpu::isa_name(cpu::best_supported_isa());
  return info;
}

}  // namespace mnv3
