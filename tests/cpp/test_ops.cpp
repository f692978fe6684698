// C++ (LibTorch) test of the mnv3 operators through the dispatcher, against ATen's unfused path.
// Per-operator ATen headers only: <torch/torch.h> costs minutes of compile time.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/relu.h>

#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  if (!ok) ++failures;
}

at::Tensor dwconv_bn_act(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         std::vector<int64_t> s, std::vector<int64_t> p, std::vector<int64_t> d,
                         const std::string& act) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mnv3::dwconv_bn_act", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, c10::string_view)>();
  return op.call(x, w, b, s, p, d, act);
}

at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                     std::vector<int64_t> s, std::vector<int64_t> p, std::vector<int64_t> d,
                     const std::string& act) {
  auto y = at::conv2d(x, w, b, s, p, d, x.size(1));
  if (act == "relu") return at::relu(y);
  if (act == "hardswish") return at::hardswish(y);
  if (act == "relu6") return at::hardtanh(y, 0, 6);
  return y;
}

void check_dwconv(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t s, int64_t d,
                  const std::string& act, bool channels_last) {
  auto x = at::randn({n, c, h, w});
  if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto wt = at::randn({c, 1, k, k});
  auto b = at::randn({c});
  const int64_t pad = d * (k - 1) / 2;
  auto got = dwconv_bn_act(x, wt, b, {s, s}, {pad, pad}, {d, d}, act);
  auto want = reference(x, wt, b, {s, s}, {pad, pad}, {d, d}, act);
  const bool same_layout = !channels_last || got.is_contiguous(at::MemoryFormat::ChannelsLast);
  const std::string name = "dwconv_bn_act n" + std::to_string(n) + " c" + std::to_string(c) +
                           " " + std::to_string(h) + "x" + std::to_string(w) + " k" +
                           std::to_string(k) + " s" + std::to_string(s) + " d" +
                           std::to_string(d) + " " + act + (channels_last ? " NHWC" : " NCHW");
  expect(got.sizes() == want.sizes() && same_layout && at::allclose(got, want, 1e-4, 1e-4), name);
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (bool cl : {false, true}) {
    check_dwconv(1, 16, 112, 112, 3, 1, 1, "relu", cl);
    check_dwconv(2, 72, 57, 55, 5, 2, 1, "hardswish", cl);
    check_dwconv(1, 13, 7, 9, 3, 1, 2, "none", cl);
    check_dwconv(3, 960, 7, 7, 5, 1, 1, "hardswish", cl);
    check_dwconv(2, 24, 13, 11, 3, 2, 1, "relu6", cl);
  }
  bool threw = false;
  try {
    dwconv_bn_act(at::randn({1, 8, 5, 5}), at::randn({4, 1, 3, 3}), c10::nullopt, {1, 1},
                  {1, 1}, {1, 1}, "relu");
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("channels") != std::string::npos;
  }
  expect(threw, "channel mismatch raises a clear error");

  // In-place h-swish: the same storage comes back holding hardswish(x).
  static auto hardswish_ = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mnv3::hardswish_", "")
                               .typed<void(const at::Tensor&)>();
  auto x = at::mul(at::randn({2, 24, 9, 11}), 4);  // spans all three pieces
  const auto want = at::hardswish(x);
  const void* storage = x.data_ptr();
  hardswish_.call(x);
  expect(x.data_ptr() == storage && at::allclose(x, want, 1e-6, 1e-6), "hardswish_ in place");
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
