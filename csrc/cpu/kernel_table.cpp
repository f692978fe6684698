// The kernel table of each instruction set, and the one the CPU operators use (isa.cpp picks it).
#include "isa.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define MNV3_X86 1
#else
#define MNV3_X86 0
#endif

namespace mnv3 {
namespace cpu {
namespace {

#define MNV3_KERNEL_TABLE(isa)                                                            \
  KernelTable {                                                                           \
    isa::kLanes, isa::dw_nhwc, isa::dw_nchw_planes, isa::dw_nchw_tiles, isa::dw_band_pack, \
        isa::dw_band, isa::dw_band_in_place, isa::hard_act,                              \
        isa::se_plane_sums, isa::se_pixel_sums, isa::se_fc1, isa::se_fc2,                 \
        isa::se_scale_planes, isa::se_scale_pixels                                        \
  }

const KernelTable kPortable = MNV3_KERNEL_TABLE(portable);
#if MNV3_X86
const KernelTable kAvx2 = MNV3_KERNEL_TABLE(avx2);
const KernelTable kAvx512 = MNV3_KERNEL_TABLE(avx512);
#else  // isa.cpp never selects AVX2 or AVX-512 here
const KernelTable& kAvx2 = kPortable;
const KernelTable& kAvx512 = kPortable;
#endif

}  // namespace

const KernelTable& kernels() {
  switch (active_isa()) {
    case Isa::Avx512:
      return kAvx512;
    case Isa::Avx2:
      return kAvx2;
    default:
      return kPortable;
  }
}

}  // namespace cpu
}  // namespace mnv3
