// pool.cpp: 2-D max pooling on NHWC with PyTorch semantics (padding never wins, the first maximum in
// window order wins ties, NaN propagates). argmax holds the flat index into x of the chosen input
// ((n * H + h) * W + w) * C + c; backward scatters dy there (assigns dx).
// Tested by test/native/test_kernels.cpp ("kernels: maxpool ...").
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

void CpuBackend::maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s) {
  check_pool_shape("maxpool2d_forward", s);
  const int P = s.P(), Q = s.Q(), C = s.C;
  pool().parallel_for(static_cast<int64_t>(s.N) * P, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t np = b; np < e; ++np) {
      const int n = static_cast<int>(np / P), p = static_cast<int>(np % P);
      const int h0 = p * s.stride - s.pad, h_lo = std::max(0, h0), h_hi = std::min(s.H, h0 + s.kernel);
      for (int q = 0; q < Q; ++q) {
        const int w0 = q * s.stride - s.pad, w_lo = std::max(0, w0), w_hi = std::min(s.W, w0 + s.kernel);
        float* yo = y + (np * Q + q) * C;
        int32_t* ao = argmax + (np * Q + q) * C;
        // Start from the first tap inside the image (pad <= kernel / 2 guarantees one), then
        // branch-free selects so the channel loop vectorises.
        const int32_t first = static_cast<int32_t>(((static_cast<int64_t>(n) * s.H + h_lo) * s.W + w_lo) * C);
        for (int c = 0; c < C; ++c) {
          yo[c] = x[first + c];
          ao[c] = first + c;
        }
        for (int h = h_lo; h < h_hi; ++h)
          for (int w = w_lo; w < w_hi; ++w) {
            const int32_t base = static_cast<int32_t>(((static_cast<int64_t>(n) * s.H + h) * s.W + w) * C);
            if (base == first) continue;
            const float* xi = x + base;
            const int channels = C;  // a local copy: stores through yo/ao cannot change it
            for (int c = 0; c < channels; ++c) {
              const float v = xi[c], cur = yo[c];
              const int32_t arg = ao[c];
              const bool take = (v > cur) | ((v != v) & (cur == cur));  // a NaN wins (and propagates)
              yo[c] = take ? v : cur;
              ao[c] = take ? base + c : arg;
            }
          }
      }
    }
  });
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
