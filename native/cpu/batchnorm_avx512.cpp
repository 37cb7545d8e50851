// batchnorm_avx512.cpp: the batch-norm row loops of batchnorm.cpp (batchnorm_kernels.h) compiled with the
// AVX512 flags (the build gives *_avx512.cpp files those flags); batchnorm.cpp calls them when the
// backend's ISA is avx512. Tested by test/native/test_kernels.cpp ("kernels: batchnorm ...").
#include "cpu/batchnorm_kernels.h"

namespace mveb {
MVEB_DEFINE_BATCHNORM_KERNELS(batchnorm_kernels_avx512)
}  // namespace mveb
