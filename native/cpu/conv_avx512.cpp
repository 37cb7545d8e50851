// conv_avx512.cpp: the Winograd transforms and the direct few-channel kernel of conv.cpp
// (winograd_transforms.h, direct_conv.h) compiled with the
// AVX-512 flags (the build gives *_avx512.cpp files those flags); conv.cpp calls them when the
// backend's ISA is avx512. Tested by test/native/test_kernels.cpp ("kernels: conv ...").
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include "cpu/direct_conv.h"
#include "cpu/winograd_transforms.h"

namespace mveb {
MVEB_DEFINE_WINOGRAD_TRANSFORMS(winograd_transforms_avx512)
MVEB_DEFINE_DIRECT_CONV(direct_conv_avx512)
}  // namespace mveb
