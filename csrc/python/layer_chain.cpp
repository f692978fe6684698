// A chain of fused CPU layers run in one call from Python, and the checks that it is still what
// the modules would compute. A converted feature extractor (FusedSequential, modules.py) runs
// its 15-20 layers through one LayerChain in eval mode: no Python, no dispatcher and no idle
// gap for the OpenMP workers between the layers. Measured on MobileNetV3-Large at batch 1,
// the same kernels called layer by layer from Python took 0.8 ms more per image.
//
// What the chain verifies per call (valid()), recorded when it was built:
// - watched values: dict[key] is still the same object (a module's "training" flag, a BN's eps,
//   a fused module's backend);
// - watched members: a dict's values are still the same objects, in order (a module's
//   _modules, _parameters, _buffers: a replaced layer or parameter);
// - watched tensors: version counter and storage address unchanged (in-place writes, optimizer
//   steps, load_state_dict, .data =). The chain holds every watched object, so no other object
//   can take its address meanwhile.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_variable.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "../cpu/packed_ops.h"

namespace py = pybind11;

namespace mnv3 {
namespace {

at::Tensor tensor_arg(py::handle h, const char* what) {
  if (!THPVariable_Check(h.ptr())) throw py::type_error(std::string("LayerChain: ") + what + " must be a tensor");
  return THPVariable_Unpack(h.ptr());
}

c10::optional<at::Tensor> optional_tensor_arg(py::handle h, const char* what) {
  if (h.is_none()) return c10::nullopt;
  return tensor_arg(h, what);
}

struct Step {
  enum Kind { kBlock, kDense, kPointwise, kPool } kind;
  at::Tensor packed, project_packed, dw_weight;
  c10::optional<at::Tensor> expand_packed, dw_bias, fc1_w, fc1_b, fc2_w, fc2_b;
  int64_t channels = 0, out_channels = 0;
  std::vector<int64_t> kernel_size, stride, padding, dilation;
  std::string activation, dw_activation;
  bool residual = false;
  cpu::DwBandPacked dw_packed;  // blocks: packed once here, not on every call
};

class LayerChain {
 public:
  // The arguments of mnv3::inverted_residual_packed after x.
  void add_block(py::handle expand_packed, int64_t expand_channels, std::string expand_activation,
                 py::handle dw_weight, py::handle dw_bias, std::vector<int64_t> stride,
                 std::vector<int64_t> padding, std::vector<int64_t> dilation,
                 std::string dw_activation, py::handle fc1_w, py::handle fc1_b, py::handle fc2_w,
                 py::handle fc2_b, py::handle project_packed, int64_t out_channels, bool residual) {
    Step s;
    s.kind = Step::kBlock;
    s.expand_packed = optional_tensor_arg(expand_packed, "expand_packed");
    s.channels = expand_channels;
    s.activation = std::move(expand_activation);
    s.dw_weight = tensor_arg(dw_weight, "dw_weight");
    s.dw_bias = optional_tensor_arg(dw_bias, "dw_bias");
    s.stride = std::move(stride);
    s.padding = std::move(padding);
    s.dilation = std::move(dilation);
    s.dw_activation = std::move(dw_activation);
    s.fc1_w = optional_tensor_arg(fc1_w, "se_fc1_weight");
    s.fc1_b = optional_tensor_arg(fc1_b, "se_fc1_bias");
    s.fc2_w = optional_tensor_arg(fc2_w, "se_fc2_weight");
    s.fc2_b = optional_tensor_arg(fc2_b, "se_fc2_bias");
    s.project_packed = tensor_arg(project_packed, "project_packed");
    s.out_channels = out_channels;
    s.residual = residual;
    s.dw_packed = cpu::pack_dw_band(s.dw_weight, s.dw_bias);
    steps_.push_back(std::move(s));
  }

  // The arguments of mnv3::dense_conv_bn_act_packed after x.
  void add_dense(py::handle packed, int64_t out_channels, std::vector<int64_t> kernel_size,
                 std::vector<int64_t> stride, std::vector<int64_t> padding,
                 std::vector<int64_t> dilation, std::string activation) {
    Step s;
    s.kind = Step::kDense;
    s.packed = tensor_arg(packed, "packed");
    s.out_channels = out_channels;
    s.kernel_size = std::move(kernel_size);
    s.stride = std::move(stride);
    s.padding = std::move(padding);
    s.dilation = std::move(dilation);
    s.activation = std::move(activation);
    steps_.push_back(std::move(s));
  }

  // mnv3::pointwise_conv_bn_act_packed(x, packed, out_channels, activation) (no residual/scale).
  void add_pointwise(py::handle packed, int64_t out_channels, std::string activation) {
    Step s;
    s.kind = Step::kPointwise;
    s.packed = tensor_arg(packed, "packed");
    s.out_channels = out_channels;
    s.activation = std::move(activation);
    steps_.push_back(std::move(s));
  }

  // mnv3::global_avg_pool(x): the step between a model's features and its classifier; the 1x1
  // steps after it read the (N, C, 1, 1) result as one pixel per sample.
  void add_pool() {
    Step s;
    s.kind = Step::kPool;
    steps_.push_back(std::move(s));
  }

  // An activation module right after a 1x1 step: applied in that step's epilogue.
  void merge_activation(std::string activation) {
    if (steps_.empty() || steps_.back().kind != Step::kPointwise || steps_.back().activation != "none")
      throw py::value_error("LayerChain: an activation merges only into a 1x1 step without one");
    steps_.back().activation = std::move(activation);
  }

  void watch_value(py::dict d, py::str key) {
    PyObject* v = PyDict_GetItemWithError(d.ptr(), key.ptr());  // borrowed; null if absent
    if (v == nullptr && PyErr_Occurred()) throw py::error_already_set();
    values_.push_back({d, key, v ? py::reinterpret_borrow<py::object>(v) : py::object(),
                       dict_tag(d.ptr())});
  }

  void watch_members(py::dict d) {
    Members m{d, {}, dict_tag(d.ptr())};
    for (auto item : d) m.values.push_back(py::reinterpret_borrow<py::object>(item.second));
    members_.push_back(std::move(m));
  }

  // False (nothing recorded) for an inference tensor: it has no version counter.
  bool watch_tensor(py::handle t) {
    const at::Tensor& v = tensor_arg(t, "watched tensor");
    if (v.is_inference()) return false;
    const c10::TensorImpl* impl = v.unsafeGetTensorImpl();
    tensors_.push_back({py::reinterpret_borrow<py::object>(t), impl, v._version(), storage_of(impl)});
    return true;
  }

  bool valid() const {
    prefetch_watched();
    if (!dicts_unmodified() && !dicts_hold_what_they_held()) return false;
    for (const auto& w : tensors_) {
      if (w.impl->version_counter().current_version() != w.version || storage_of(w.impl) != w.storage)
        return false;
    }
    return true;
  }

  py::object run(py::handle x_obj) const {
    at::Tensor h = tensor_arg(x_obj, "x");
    without_gil([&] {
      for (const Step& s : steps_) h = run_step(s, h);
    });
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(h)));
  }

  // Seconds each step took, summed over `repeats` runs of the whole chain on x: where a chain
  // spends its time with the caches as a real forward leaves them (a layer timed alone runs
  // with its weights and input already in cache).
  std::vector<double> profile(py::handle x_obj, int64_t repeats) const {
    if (repeats < 1) {
      throw py::value_error("LayerChain.profile: repeats must be >= 1, got " + std::to_string(repeats));
    }
    const at::Tensor x = tensor_arg(x_obj, "x");
    std::vector<double> seconds(steps_.size(), 0.0);
    without_gil([&] {
      for (int64_t r = 0; r < repeats; ++r) {
        at::Tensor h = x;
        for (size_t i = 0; i < steps_.size(); ++i) {
          const auto t0 = std::chrono::steady_clock::now();
          h = run_step(steps_[i], h);
          seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
      }
    });
    return seconds;
  }

  size_t size() const { return steps_.size(); }

  // What each step runs: ("block", has_expand, has_se, residual), ("dense", activation),
  // ("pointwise", activation) or ("pool",).
  py::list describe() const {
    py::list out;
    for (const Step& s : steps_) {
      if (s.kind == Step::kBlock)
        out.append(py::make_tuple("block", s.expand_packed.has_value(), s.fc1_w.has_value(), s.residual));
      else if (s.kind == Step::kPool)
        out.append(py::make_tuple("pool"));
      else
        out.append(py::make_tuple(s.kind == Step::kDense ? "dense" : "pointwise", s.activation));
    }
    return out;
  }

 private:
  struct Value {
    py::dict dict;
    py::str key;
    py::object value;  // null handle: the key was absent
    mutable uint64_t tag;
  };
  struct Members {
    py::dict dict;
    std::vector<py::object> values;
    mutable uint64_t tag;
  };
  struct Watched {
    py::object tensor;  // keeps impl alive: a Python tensor keeps its TensorImpl for life
    const c10::TensorImpl* impl;
    int64_t version;
    const void* storage;
  };

  // A dict's modification tag (CPython <= 3.11: ma_version_tag, PEP 509, a new value on every
  // insertion, deletion or replacement), or 0 where there is none to read.
  static uint64_t dict_tag(PyObject* d) {
#if PY_VERSION_HEX < 0x030C0000 && !defined(Py_LIMITED_API)
    return reinterpret_cast<PyDictObject*>(d)->ma_version_tag;
#else
    (void)d;
    return 0;
#endif
  }

  // Every watched dict unmodified since it was last found to hold what it held: one load each.
  bool dicts_unmodified() const {
    for (const auto& w : values_) {
      if (w.tag == 0 || dict_tag(w.dict.ptr()) != w.tag) return false;
    }
    for (const auto& m : members_) {
      if (m.tag == 0 || dict_tag(m.dict.ptr()) != m.tag) return false;
    }
    return true;
  }

  // The full check (a modified dict may still hold the same objects): each watched key's
  // value, each watched dict's values in order; when they match, the tags are renewed.
  bool dicts_hold_what_they_held() const {
    for (const auto& w : values_) {
      PyObject* v = PyDict_GetItemWithError(w.dict.ptr(), w.key.ptr());
      if (v == nullptr && PyErr_Occurred()) throw py::error_already_set();
      if (v != w.value.ptr()) return false;  // null == absent then and now
    }
    for (const auto& m : members_) {
      if (static_cast<size_t>(PyDict_Size(m.dict.ptr())) != m.values.size()) return false;
      Py_ssize_t pos = 0;
      PyObject *key, *value;
      size_t i = 0;
      while (PyDict_Next(m.dict.ptr(), &pos, &key, &value)) {
        if (value != m.values[i++].ptr()) return false;
      }
    }
    for (const auto& w : values_) w.tag = dict_tag(w.dict.ptr());
    for (const auto& m : members_) m.tag = dict_tag(m.dict.ptr());
    return true;
  }

  // After a forward the ~750 watched objects of a MobileNetV3 are out of the caches, and each
  // check is a chain of dependent loads: one after another they took 116 us of a 3.9 ms call
  // (Large, batch 1). Touching every object first lets the misses overlap; with the dict tags
  // the check took 45-60 us.
  void prefetch_watched() const {
    for (const auto& w : values_) __builtin_prefetch(w.dict.ptr());
    for (const auto& m : members_) __builtin_prefetch(m.dict.ptr());
    for (const auto& w : tensors_) {
      __builtin_prefetch(&w.impl->version_counter());
      __builtin_prefetch(&w.impl->unsafe_storage());
    }
    // A VariableVersion is one pointer to its shared counter, read by current_version().
    static_assert(sizeof(c10::VariableVersion) == sizeof(void*), "VariableVersion layout");
    for (const auto& w : tensors_) {
      __builtin_prefetch(*reinterpret_cast<const void* const*>(&w.impl->version_counter()));
      if (w.impl->has_storage()) __builtin_prefetch(w.impl->unsafe_storage().unsafeGetStorageImpl());
    }
  }

  // Runs f with the GIL released; the layers' c10 errors become the Python exceptions their
  // registered operators raise (ValueError, TypeError, RuntimeError).
  template <typename F>
  static void without_gil(const F& f) {
    py::gil_scoped_release no_gil;
    try {
      f();
    } catch (const c10::ValueError& e) {
      py::gil_scoped_acquire gil;
      throw py::value_error(e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      py::gil_scoped_acquire gil;
      throw py::type_error(e.what_without_backtrace());
    } catch (const c10::Error& e) {
      py::gil_scoped_acquire gil;
      throw std::runtime_error(e.what_without_backtrace());
    }
  }

  static const void* storage_of(const c10::TensorImpl* t) { return t->has_storage() ? t->data() : nullptr; }

  static at::Tensor run_step(const Step& s, const at::Tensor& x) {
    switch (s.kind) {
      case Step::kBlock:
        return cpu::inverted_residual_prepacked_cpu(
            x, s.expand_packed, s.channels, s.activation, s.dw_weight, s.dw_bias, s.stride,
            s.padding, s.dilation, s.dw_activation, s.fc1_w, s.fc1_b, s.fc2_w, s.fc2_b,
            s.project_packed, s.out_channels, s.residual, &s.dw_packed);
      case Step::kDense:
        return cpu::dense_conv_bn_act_packed_cpu(x, s.packed, s.out_channels, s.kernel_size,
                                                 s.stride, s.padding, s.dilation, s.activation);
      case Step::kPointwise:
        return cpu::pointwise_conv_bn_act_packed_cpu(x, s.packed, s.out_channels, s.activation,
                                                     c10::nullopt, c10::nullopt);
      case Step::kPool:
        return cpu::global_avg_pool_cpu(x);
    }
    return x;
  }

  std::vector<Step> steps_;
  std::vector<Value> values_;
  std::vector<Members> members_;
  std::vector<Watched> tensors_;
};

}  // namespace

void bind_layer_chain(py::module_& m) {
  py::class_<LayerChain>(m, "LayerChain",
                         "Fused CPU layers run back to back in one call, with the checks that "
                         "the modules they came from are unchanged (csrc/python/layer_chain.cpp).")
      .def(py::init<>())
      .def("add_block", &LayerChain::add_block)
      .def("add_dense", &LayerChain::add_dense)
      .def("add_pointwise", &LayerChain::add_pointwise)
      .def("add_pool", &LayerChain::add_pool)
      .def("merge_activation", &LayerChain::merge_activation)
      .def("watch_value", &LayerChain::watch_value)
      .def("watch_members", &LayerChain::watch_members)
      .def("watch_tensor", &LayerChain::watch_tensor)
      .def("valid", &LayerChain::valid)
      .def("__call__", &LayerChain::run)
      .def("profile", &LayerChain::profile, py::arg("x"), py::arg("repeats") = 1)
      .def("__len__", &LayerChain::size)
      .def("describe", &LayerChain::describe);
}

}  // namespace mnv3
