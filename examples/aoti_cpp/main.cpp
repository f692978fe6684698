// Runs an AOTInductor package of a converted MobileNetV3 from C++, without Python.
//
//   python examples/aoti_cpp/export_model.py --out DIR   # model.pt2, input.bin, expected.bin
//   mnv3_aoti_example DIR SIZE
//
// The package calls the mnv3 operators; they register when libmnv3_kernels is loaded, so the
// executable links it (with --no-as-needed: no symbol of it is named here). Prints the output's
// largest error relative to the original model's output and fails above 1e-4.
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<float> read_floats(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<float> data(static_cast<size_t>(file.tellg()) / sizeof(float));
  file.seekg(0);
  file.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  return data;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR SIZE  (DIR written by export_model.py --out DIR --size SIZE)\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t size = std::stoll(argv[2]);
  try {
    std::vector<float> input = read_floats(dir + "/input.bin");
    std::vector<float> expected = read_floats(dir + "/expected.bin");
    if (static_cast<int64_t>(input.size()) != 3 * size * size) {
      std::fprintf(stderr, "input.bin holds %zu floats, not 1x3x%lldx%lld\n", input.size(),
                   static_cast<long long>(size), static_cast<long long>(size));
      return 2;
    }
    at::Tensor x = at::from_blob(input.data(), {1, 3, size, size}, at::kFloat);

    torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
    std::vector<at::Tensor> outputs = loader.run({x});

    at::Tensor got = outputs.at(0).contiguous();
    if (got.scalar_type() != at::kFloat || got.numel() != static_cast<int64_t>(expected.size())) {
      std::fprintf(stderr, "output has %lld values, expected %zu floats\n", static_cast<long long>(got.numel()),
                   expected.size());
      return 1;
    }
    const float* y = got.data_ptr<float>();
    double max_diff = 0.0, max_want = 0.0;
    for (size_t i = 0; i < expected.size(); ++i) {
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(y[i] - expected[i])));
      max_want = std::max(max_want, static_cast<double>(std::fabs(expected[i])));
    }
    const double err = max_diff / std::max(max_want, 1e-12);
    std::printf("AOTInductor package run from C++: %zu outputs, max error relative to the original model %.3g\n",
                expected.size(), err);
    return err <= 1e-4 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
