// The Python face of the compiled library: loading it registers the operators (csrc/ops.cpp and
// the per-backend TORCH_LIBRARY_IMPL blocks); this module adds what is not an operator.
// Plain pybind11 (not torch/extension.h): nothing here touches tensors, and the full torch
// headers cost minutes of compile time.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../build_info.h"
#include "../cpu/isa.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mnv3_kernels compiled library";
  m.def("build_info", &mnv3::build_info, "Versions, CUDA build and CPU ISA of this library.");
  m.def(
      "_set_cpu_isa",
      [](const std::string& name) { mnv3::cpu::set_isa(mnv3::cpu::parse_isa(name)); },
      "Force the CPU kernel ISA ('avx512', 'avx2' or 'portable'); for tests and benchmarks.");
}
