// The Python face of the compiled library: loading it registers the operators (csrc/ops.cpp and
// the per-backend TORCH_LIBRARY_IMPL blocks); this module adds what is not an operator.
// Plain pybind11 (not torch/extension.h): the full torch headers cost minutes of compile time;
// stamp.cpp and layer_chain.cpp, which read tensors, include only the Python tensor binding.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../build_info.h"
#include "../cpu/isa.h"
#include "../cpu/stream_policy.h"

namespace mnv3 {
pybind11::object source_stamp(const pybind11::sequence& sources);  // stamp.cpp
void bind_layer_chain(pybind11::module_& m);                         // layer_chain.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mnv3_kernels compiled library";
  m.def("build_info", &mnv3::build_info, "Versions, CUDA build and CPU ISA of this library.");
  m.def(
      "_set_cpu_isa",
      [](const std::string& name) { mnv3::cpu::set_isa(mnv3::cpu::parse_isa(name)); },
      "Force the CPU kernel ISA ('avx512', 'avx2' or 'portable'); for tests and benchmarks.");
  m.def("_set_stream_threshold", &mnv3::cpu::set_stream_threshold, pybind11::arg("bytes"),
        "Outputs of at least `bytes` go out as streaming stores (negative: the cache rule); for "
        "tests.");
  m.def("_source_stamp", &mnv3::source_stamp,
        "(id, version, storage address) of each tensor (zeros for None), flattened; None if a "
        "tensor is an inference tensor. What the fused modules' caches compare.");
  mnv3::bind_layer_chain(m);
}
