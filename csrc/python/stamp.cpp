// What identifies the current contents of a fused module's source tensors (weights, BN
// statistics), computed in one call: the module caches (folded, packed weights) compare it on
// every forward, and in Python it cost ~5 us per block (mnv3_kernels/modules.py, _stamp).
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/python_variable.h>

namespace py = pybind11;

namespace mnv3 {

// For each entry: (object id, version counter, storage address), flattened; None entries give
// zeros. Returns None when a tensor has no version counter (an inference tensor): then nothing
// may be cached. The ids make `is` checks unnecessary as long as the caller keeps the objects
// alive (the caches hold them), so an id is never reused by another tensor meanwhile.
py::object source_stamp(const py::sequence& sources) {
  const auto n = static_cast<py::ssize_t>(py::len(sources));
  py::tuple out(3 * n);
  for (py::ssize_t i = 0; i < n; ++i) {
    PyObject* obj = PyTuple_Check(sources.ptr()) ? PyTuple_GET_ITEM(sources.ptr(), i)
                                                 : sources[i].ptr();
    int64_t id = 0, version = 0, ptr = 0;
    if (obj != Py_None) {
      if (!THPVariable_Check(obj)) throw py::type_error("_source_stamp: entries must be tensors or None");
      const at::Tensor& t = THPVariable_Unpack(obj);
      if (t.is_inference()) return py::none();
      id = reinterpret_cast<int64_t>(obj);
      version = static_cast<int64_t>(t._version());
      ptr = reinterpret_cast<int64_t>(t.has_storage() ? t.data_ptr() : nullptr);
    }
    out[3 * i] = py::int_(id);
    out[3 * i + 1] = py::int_(version);
    out[3 * i + 2] = py::int_(ptr);
  }
  return std::move(out);
}

}  // namespace mnv3
