// Shape of one depthwise convolution call, computed once on the host and handed to kernels.
#pragma once

#include <cstdint>

namespace mnv3 {

struct DwConvParams {
  int64_t N, C, H, W;     // input
  int64_t KH, KW;         // kernel
  int64_t SH, SW;         // stride
  int64_t PH, PW;         // padding (top/left; PyTorch pads symmetrically)
  int64_t DH, DW;         // dilation
  int64_t OH, OW;         // output
};

}  // namespace mnv3
