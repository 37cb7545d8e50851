// layout.cpp: NCHW <-> NHWC transposes (the API is NCHW, the kernels NHWC). Blocked 2-D transpose
// per image ([C, HW] <-> [HW, C]) in 32x32 tiles, threads over images x tile rows.
// Tested by test/native/test_kernels.cpp ("kernels: layout ...").
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

namespace {
// dst[c, r] = src[r, c] for a rows x cols matrix, per image, n images.
void transpose_images(ThreadPool& pool, float* dst, const float* src, int n, long rows, long cols) {
  constexpr long kTile = 32;
  const long row_tiles = (rows + kTile - 1) / kTile;
  pool.parallel_for(static_cast<int64_t>(n) * row_tiles, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const long img = t / row_tiles, r0 = (t % row_tiles) * kTile, r1 = std::min(rows, r0 + kTile);
      const float* s = src + img * rows * cols;
      float* d = dst + img * rows * cols;
      for (long c0 = 0; c0 < cols; c0 += kTile) {
        const long c1 = std::min(cols, c0 + kTile);
        for (long r = r0; r < r1; ++r)
          for (long c = c0; c < c1; ++c) d[c * rows + r] = s[r * cols + c];
      }
    }
  });
}
void check_dims(const char* op, int N, int C, int H, int W) {
  check_nonnegative(op, "N", N);
  check_nonnegative(op, "C", C);
  check_nonnegative(op, "H", H);
  check_nonnegative(op, "W", W);
}
}  // namespace

void CpuBackend::nchw_to_nhwc(float* dst, const float* src, int N, int C, int H, int W) {
  check_dims("nchw_to_nhwc", N, C, H, W);
  transpose_images(pool(), dst, src, N, C, static_cast<long>(H) * W);
}

void CpuBackend::nhwc_to_nchw(float* dst, const float* src, int N, int C, int H, int W) {
  check_dims("nhwc_to_nchw", N, C, H, W);
  transpose_images(pool(), dst, src, N, static_cast<long>(H) * W, C);
}

}  // namespace mveb
