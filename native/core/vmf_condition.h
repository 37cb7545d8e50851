// vmf_condition.h: the condition estimate of K + eta I reported by vmf_score, computed from its
// Cholesky factor on the host. One implementation for both backends (native/cpu/vmf.cpp passes its
// SIMD dot/axpy, native/cuda/loss.cu plain loops), so both report the same number. Tested through
// the vmf tests ("loss:" and "cuda:" filters).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mveb {

// Condition estimate of A = L L^T from its factor: lambda_max by power iteration from the all-ones
// vector (A > 0 elementwise, so its Perron vector is close to it), lambda_min by inverse iteration
// (one forward and one backward substitution per step). Both are Rayleigh-type bounds from inside the
// spectrum, so the estimate is <= cond(A) up to rounding; a few steps give the right magnitude.
template <typename Real, typename Dot, typename Axpy>
inline double condition_estimate(const Real* L, int N, Dot dot, Axpy axpy) {
  constexpr int kSteps = 3;
  std::vector<Real> v(N), u(N), w(N);
  auto normalise = [&](std::vector<Real>& x) {
    double s = 0;
    for (Real a : x) s += static_cast<double>(a) * a;
    const double n = std::sqrt(s);
    for (Real& a : x) a = static_cast<Real>(a / n);
    return n;
  };
  auto lower_t_times = [&](const std::vector<Real>& x, std::vector<Real>& y) {  // y = L^T x
    std::fill(y.begin(), y.end(), Real(0));
    for (int i = 0; i < N; ++i) axpy(y.data(), x[i], L + static_cast<int64_t>(i) * N, i + 1);
  };
  auto lower_times = [&](const std::vector<Real>& x, std::vector<Real>& y) {  // y = L x
    for (int i = 0; i < N; ++i) y[i] = static_cast<Real>(dot(L + static_cast<int64_t>(i) * N, x.data(), i + 1));
  };
  auto lower_solve = [&](std::vector<Real>& x) {  // x = L^{-1} x
    for (int i = 0; i < N; ++i) {
      const Real* row = L + static_cast<int64_t>(i) * N;
      x[i] = static_cast<Real>((x[i] - dot(row, x.data(), i)) / row[i]);
    }
  };
  auto lower_t_solve = [&](std::vector<Real>& x) {  // x = L^{-T} x
    for (int i = N - 1; i >= 0; --i) {
      const Real* row = L + static_cast<int64_t>(i) * N;
      x[i] = static_cast<Real>(x[i] / row[i]);
      axpy(x.data(), -x[i], row, i);
    }
  };
  std::fill(v.begin(), v.end(), Real(1));
  normalise(v);
  double lambda_max = 0;
  for (int s = 0; s < kSteps; ++s) {
    lower_t_times(v, u);
    lower_times(u, w);
    double rq = 0;
    for (int i = 0; i < N; ++i) rq += static_cast<double>(v[i]) * w[i];
    lambda_max = std::max(lambda_max, rq);
    v = w;
    normalise(v);
  }
  for (int i = 0; i < N; ++i) v[i] = static_cast<Real>(((i * 7919) % 13) - 6.0 + 0.5 * std::sin(i + 1.0));
  normalise(v);
  double inv_lambda_min = 0;
  for (int s = 0; s < kSteps; ++s) {
    lower_solve(v);
    lower_t_solve(v);
    inv_lambda_min = std::max(inv_lambda_min, normalise(v));
  }
  return lambda_max * inv_lambda_min;
}

// Plain-loop version for callers without SIMD primitives.
inline double condition_estimate(const double* L, int N) {
  return condition_estimate<double>(
      L, N,
      [](const double* a, const double* b, int n) {
        double s = 0;
        for (int i = 0; i < n; ++i) s += a[i] * b[i];
        return s;
      },
      [](double* y, double a, const double* x, int n) {
        for (int i = 0; i < n; ++i) y[i] += a * x[i];
      });
}

}  // namespace mveb
