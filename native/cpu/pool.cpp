// pool.cpp: 2-D max pooling on NHWC with PyTorch semantics (padding never wins, the first maximum in
// window order wins ties, a NaN wins: the last one in window order). argmax holds the flat index
// into x of the chosen input ((n * H + h) * W + w) * C + c; backward scatters dy there (assigns dx).
// The forward's row loop is pool_kernels.h, compiled per ISA (this file's baseline copy,
// pool_avx2.cpp, pool_avx512.cpp).
// Tested by test/native/test_kernels.cpp ("kernels: maxpool ...").
#include <cstring>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"
#include "cpu/pool_kernels.h"

namespace mveb {

MVEB_DEFINE_MAXPOOL_ROWS(maxpool_rows_scalar)

void CpuBackend::maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s) {
  check_pool_shape("maxpool2d_forward", s);
  const MaxpoolRows rows = isa() == Isa::Avx512 ? maxpool_rows_avx512() : isa() == Isa::Avx2 ? maxpool_rows_avx2()
                                                                                            : maxpool_rows_scalar();
  pool().parallel_for(static_cast<int64_t>(s.N) * s.P(), 1,
                      [&](int64_t b, int64_t e, int) { rows(y, argmax, x, s, b, e); });
}

void CpuBackend::maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s) {
  check_pool_shape("maxpool2d_backward", s);
  const int64_t in_per_image = static_cast<int64_t>(s.H) * s.W * s.C, out_per_image = static_cast<int64_t>(s.P()) * s.Q() * s.C;
  pool().parallel_for(s.N, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t n = b; n < e; ++n) {
      std::memset(dx + n * in_per_image, 0, sizeof(float) * static_cast<size_t>(in_per_image));
      const float* g = dy + n * out_per_image;
      const int32_t* a = argmax + n * out_per_image;
      for (int64_t i = 0; i < out_per_image; ++i) {
        const int64_t idx = a[i];
        MVEB_CHECK(idx >= n * in_per_image && idx < (n + 1) * in_per_image, "E_ARG",
                   "maxpool2d_backward: argmax ", idx, " outside image ", n);
        dx[idx] += g[i];
      }
    }
  });
}

}  // namespace mveb
