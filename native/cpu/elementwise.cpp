// elementwise.cpp: ReLU forward/backward, add, axpy, bias rows (add_bias_rows, sum_rows) and the
// global average pool, on the CPU backend's thread pool (plain loops the compiler vectorises).
// Tested by test/native/test_kernels.cpp ("kernels: relu/add/axpy/bias/avgpool ...").
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

namespace {
constexpr int64_t kGrain = 1 << 15;
}

void CpuBackend::relu_forward(float* y, const float* x, size_t n) {
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
  });
}

void CpuBackend::relu_backward(float* dx, const float* dy, const float* y, size_t n) {
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float d = dy[i], yv = y[i];  // both loads unconditional: the select vectorises
      dx[i] = yv > 0.f ? d : 0.f;
    }
  });
}

void CpuBackend::add(float* y, const float* a, const float* b, size_t n) {
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t s, int64_t e, int) {
    for (int64_t i = s; i < e; ++i) y[i] = a[i] + b[i];
  });
}

void CpuBackend::axpy(float* y, float alpha, const float* x, size_t n) {
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) y[i] += alpha * x[i];
  });
}

void CpuBackend::add_bias_rows(float* y, const float* bias, int M, int N) {
  check_nonnegative("add_bias_rows", "M", M);
  check_nonnegative("add_bias_rows", "N", N);
  pool().parallel_for(M, std::max<int64_t>(1, kGrain / std::max(1, N)), [&](int64_t b, int64_t e, int) {
    for (int64_t m = b; m < e; ++m) {
      float* row = y + m * N;
      for (int n = 0; n < N; ++n) row[n] += bias[n];
    }
  });
}

void CpuBackend::sum_rows(float* dbias, const float* dy, int M, int N) {
  check_nonnegative("sum_rows", "M", M);
  check_nonnegative("sum_rows", "N", N);
  const int T = pool().size();
  std::vector<double> partial(static_cast<size_t>(T) * N, 0.0);
  pool().parallel_for(M, std::max<int64_t>(1, kGrain / std::max(1, N)), [&](int64_t b, int64_t e, int t) {
    double* acc = partial.data() + static_cast<size_t>(t) * N;
    std::vector<float> block(static_cast<size_t>(N));
    for (int64_t m0 = b; m0 < e; m0 += 64) {  // float sums over 64 rows, then double
      std::fill(block.begin(), block.end(), 0.f);
      for (int64_t m = m0; m < std::min(e, m0 + 64); ++m) {
        const float* row = dy + m * N;
        for (int n = 0; n < N; ++n) block[n] += row[n];
      }
      for (int n = 0; n < N; ++n) acc[n] += block[n];
    }
  });
  for (int n = 0; n < N; ++n) {
    double s = 0;
    for (int t = 0; t < T; ++t) s += partial[static_cast<size_t>(t) * N + n];
    dbias[n] += static_cast<float>(s);
  }
}

void CpuBackend::global_avgpool_forward(float* y, const float* x, int N, int HW, int C) {
  check_nonnegative("global_avgpool_forward", "N", N);
  check_positive("global_avgpool_forward", "HW", HW);
  check_nonnegative("global_avgpool_forward", "C", C);
  const float inv = 1.f / static_cast<float>(HW);
  pool().parallel_for(N, 1, [&](int64_t b, int64_t e, int) {
    std::vector<float> acc(static_cast<size_t>(C));
    for (int64_t n = b; n < e; ++n) {
      std::fill(acc.begin(), acc.end(), 0.f);
      const float* img = x + n * static_cast<int64_t>(HW) * C;
      for (int p = 0; p < HW; ++p)
        for (int c = 0; c < C; ++c) acc[c] += img[static_cast<int64_t>(p) * C + c];
      for (int c = 0; c < C; ++c) y[n * C + c] = acc[c] * inv;
    }
  });
}

void CpuBackend::global_avgpool_backward(float* dx, const float* dy, int N, int HW, int C) {
  check_nonnegative("global_avgpool_backward", "N", N);
  check_positive("global_avgpool_backward", "HW", HW);
  check_nonnegative("global_avgpool_backward", "C", C);
  const float inv = 1.f / static_cast<float>(HW);
  pool().parallel_for(static_cast<int64_t>(N) * HW, std::max<int64_t>(1, kGrain / std::max(1, C)),
                      [&](int64_t b, int64_t e, int) {
                        for (int64_t r = b; r < e; ++r) {
                          const float* g = dy + (r / HW) * C;
                          float* d = dx + r * C;
                          for (int c = 0; c < C; ++c) d[c] = g[c] * inv;
                        }
                      });
}

}  // namespace mveb
