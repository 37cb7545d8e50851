// pool_avx512.cpp: the max-pooling forward row loop of pool.cpp (pool_kernels.h) compiled with the
// AVX512 flags (the build gives *_avx512.cpp files those flags); pool.cpp calls it when the backend's
// ISA is avx512. Tested by test/native/test_kernels.cpp ("kernels: maxpool ...").
#include "cpu/pool_kernels.h"

namespace mveb {
MVEB_DEFINE_MAXPOOL_ROWS(maxpool_rows_avx512)
}  // namespace mveb
