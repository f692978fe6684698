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
// - the owner (the module whose cache holds the chain), through a weak reference: values in
//   its __dict__ (its training flag, its children's dict). A strong one would be a reference
//   cycle through this object, which the garbage collector cannot see into.
//
// run_checked(x) is a module's whole fast path in one call: after a forward the interpreter's
// own data is out of the caches and each Python-level check cost 5-30 us (Large, batch 1: the
// module checks and calls around a chain took 0.26 ms of 3.9), so the checks of x and of the
// autograd, inference and tracing state are made here, and the calls counted for path_stats().
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <chrono>
#include <map>
#include <string>
#include <unordered_set>
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

// Calls served by run_checked, per owner class name (read and cleared by _chain_calls; the GIL
// guards it).
std::map<std::string, int64_t>& served_calls() {
  static std::map<std::string, int64_t> calls;
  return calls;
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

  // Whether every tensor the chain's weights derive from is one of `sources` (the same tensor
  // objects): a torch.compile graph that passes its owner's parameters and buffers runs the
  // chain only while it computes from those (not under torch.func.functional_call with others).
  bool reads_only(py::sequence sources) const {
    std::unordered_set<const c10::TensorImpl*> given;
    for (auto item : sources) {
      if (THPVariable_Check(item.ptr())) given.insert(THPVariable_Unpack(item.ptr()).unsafeGetTensorImpl());
    }
    for (const auto& w : tensors_) {
      if (given.count(w.impl) == 0) return false;
    }
    return true;
  }

  // What run_checked serves: x of in_dim dimensions (2: (N, K) read as (N, K, 1, 1)), in or out
  // of inference mode as when the chain was built; flat_out: the (N, C, 1, 1) result as (N, C).
  // label: the owner's class, for path_stats().
  void serve(int64_t in_dim, bool flat_out, bool inference_mode, std::string label) {
    if (in_dim != 2 && in_dim != 4) throw py::value_error("LayerChain.serve: in_dim must be 2 or 4");
    in_dim_ = in_dim;
    flat_out_ = flat_out;
    inference_ = inference_mode;
    label_ = std::move(label);
  }

  // The owner's __dict__ must still hold, under each key, what it holds now (or still lack it).
  void watch_owner(py::handle owner, std::vector<std::string> keys) {
    PyObject** dict = _PyObject_GetDictPtr(owner.ptr());
    if (dict == nullptr || *dict == nullptr) throw py::type_error("LayerChain.watch_owner: the owner has no __dict__");
    owner_ = py::weakref(owner);
    owner_dict_ = *dict;
    for (auto& k : keys) {
      py::str key(k);
      PyObject* v = PyDict_GetItemWithError(owner_dict_, key.ptr());
      if (v == nullptr && PyErr_Occurred()) throw py::error_already_set();
      owner_values_.push_back({key, v ? py::reinterpret_borrow<py::object>(v) : py::object()});
    }
  }

  // The chain's output for x, or None when it cannot serve it (the caller then takes its
  // checked path, which rebuilds the chain or says why not).
  py::object run_checked(py::handle x_obj) {
    if (in_dim_ == 0 || !THPVariable_Check(x_obj.ptr())) return py::none();
    const at::Tensor& x = THPVariable_Unpack(x_obj.ptr());
    if (!x.defined() || !x.device().is_cpu() || x.scalar_type() != at::kFloat || x.dim() != in_dim_ ||
        x.key_set().has(c10::DispatchKey::Python) || at::GradMode::is_enabled() ||
        c10::InferenceMode::is_enabled() != inference_ || torch::jit::tracer::isTracing() ||
        !valid()) {
      return py::none();
    }
    ++served_calls()[label_];
    at::Tensor h = run_steps(in_dim_ == 2 ? x.view({x.size(0), x.size(1), 1, 1}) : x);
    if (in_dim_ == 2 || flat_out_) h = h.view({h.size(0), h.size(1)});
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(h)));
  }

  bool valid() const {
    if (!owner_unchanged()) return false;
    prefetch_watched();
    if (!dicts_unmodified() && !dicts_hold_what_they_held()) return false;
    for (const auto& w : tensors_) {
      if (w.impl->version_counter().current_version() != w.version || storage_of(w.impl) != w.storage)
        return false;
    }
    return true;
  }

  py::object run(py::handle x_obj) const {
    return py::reinterpret_steal<py::object>(THPVariable_Wrap(run_steps(tensor_arg(x_obj, "x"))));
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
  bool owner_unchanged() const {
    if (!owner_) return true;
    PyObject* owner = PyWeakref_GetObject(owner_.ptr());  // borrowed; None once it is gone
    if (owner == Py_None) return false;
    PyObject** dict = _PyObject_GetDictPtr(owner);
    if (dict == nullptr || *dict != owner_dict_) return false;  // alive: owner_dict_ is too
    for (const auto& w : owner_values_) {
      PyObject* v = PyDict_GetItemWithError(owner_dict_, w.first.ptr());
      if (v == nullptr && PyErr_Occurred()) throw py::error_already_set();
      if (v != w.second.ptr()) return false;
    }
    return true;
  }

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

  // Every step on h, the GIL released.
  at::Tensor run_steps(at::Tensor h) const {
    without_gil([&] {
      for (const Step& s : steps_) h = run_step(s, h);
    });
    return h;
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
  int64_t in_dim_ = 0;  // 0: serve() not called, run_checked serves nothing
  bool flat_out_ = false, inference_ = false;
  std::string label_;
  py::weakref owner_;
  PyObject* owner_dict_ = nullptr;  // borrowed: compared with the live owner's before any use
  std::vector<std::pair<py::str, py::object>> owner_values_;
  std::vector<Value> values_;
  std::vector<Members> members_;
  std::vector<Watched> tensors_;
};

}  // namespace

void bind_layer_chain(py::module_& m) {
  m.def(
      "_chain_calls",
      [] {
        py::dict out;
        for (const auto& kv : served_calls()) out[py::str(kv.first)] = kv.second;
        served_calls().clear();
        return out;
      },
      "Calls served by LayerChain.run_checked since the last call, per owner class name.");
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
      .def("reads_only", &LayerChain::reads_only)
      .def("serve", &LayerChain::serve, py::arg("in_dim"), py::arg("flat_out"), py::arg("inference_mode"),
           py::arg("label"))
      .def("watch_owner", &LayerChain::watch_owner)
      .def("run_checked", &LayerChain::run_checked)
      .def("__call__", &LayerChain::run)
      .def("profile", &LayerChain::profile, py::arg("x"), py::arg("repeats") = 1)
      .def("__len__", &LayerChain::size)
      .def("describe", &LayerChain::describe);
}

}  // namespace mnv3
