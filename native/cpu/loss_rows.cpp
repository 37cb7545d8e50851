// loss_rows.cpp: row-wise L2 normalisation for the MVEB loss (CpuBackend::l2_normalize_rows_forward /
// _backward), PyTorch F.normalize semantics: y = x / max(||x||, eps).
// Forward saves norms[i] = ||x_i|| (fp64 sum of squares); backward is the exact gradient of that map:
//   ||x_i|| > eps:  dx_i = (dy_i - y_i (y_i . dy_i)) / ||x_i||     (the tangential projection)
//   otherwise:      dx_i = dy_i / eps                               (the clamp has no gradient)
// Both assign. Tested by test/native/test_vmf.cpp ("loss: l2 normalize ...") against finite
// differences in float64.
#include <algorithm>
#include <cmath>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

void CpuBackend::l2_normalize_rows_forward(float* y, float* norms, const float* x, int N, int D, float eps) {
  check_nonnegative("l2_normalize_rows_forward", "N", N);
  check_nonnegative("l2_normalize_rows_forward", "D", D);
  pool().parallel_for(N, std::max(1, 8192 / std::max(1, D)), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float* xi = x + i * D;
      float* yi = y + i * D;
      double s = 0;
      for (int d = 0; d < D; ++d) s += static_cast<double>(xi[d]) * xi[d];
      const double norm = std::sqrt(s);
      const float denom = static_cast<float>(std::max(norm, static_cast<double>(eps)));
      for (int d = 0; d < D; ++d) yi[d] = xi[d] / denom;
      norms[i] = static_cast<float>(norm);
    }
  });
}

void CpuBackend::l2_normalize_rows_backward(float* dx, const float* dy, const float* y, const float* norms, int N,
                                            int D, float eps) {
  check_nonnegative("l2_normalize_rows_backward", "N", N);
  check_nonnegative("l2_normalize_rows_backward", "D", D);
  pool().parallel_for(N, std::max(1, 8192 / std::max(1, D)), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float* yi = y + i * D;
      const float* gi = dy + i * D;
      float* oi = dx + i * D;
      if (norms[i] > eps) {
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += static_cast<double>(yi[d]) * gi[d];
        const float c = static_cast<float>(dot);
        const float inv = static_cast<float>(1.0 / norms[i]);
        for (int d = 0; d < D; ++d) oi[d] = (gi[d] - yi[d] * c) * inv;
      } else {
        const float inv = 1.f / eps;
        for (int d = 0; d < D; ++d) oi[d] = gi[d] * inv;
      }
    }
  });
}

}  // namespace mveb
