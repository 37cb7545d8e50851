// conv_avx512.cpp: the Winograd transforms of conv.cpp (winograd_transforms.h) compiled with the
// AVX-512 flags (the build gives *_avx512.cpp files those flags); conv.cpp calls them when the
// backend's ISA is avx512. Tested by test/native/test_kernels.cpp ("kernels: conv ...").
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include "cpu/winograd_transforms.h"

namespace mveb {
MVEB_DEFINE_WINOGRAD_TRANSFORMS(winograd_transforms_avx512)
}  // namespace mveb
