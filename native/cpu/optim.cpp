// optim.cpp: optimiser steps on flat float arenas (SGD with momentum, LARS as the official MVEB code,
// EMA of the target network) and the reductions all_finite / sum_squares (double accumulation).
// Tested by test/native/test_kernels.cpp ("kernels: sgd/lars/ema/...") against the reference formulas.
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <cstdint>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"

namespace mveb {

namespace {
constexpr int64_t kGrain = 1 << 15;

double sum_squares_impl(ThreadPool& pool, const float* x, size_t n) {
  std::vector<double> partial(static_cast<size_t>(pool.size()), 0.0);
  pool.parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int t) {
    double s = 0;
    for (int64_t i0 = b; i0 < e; i0 += 1024) {
      float block = 0.f;  // float over 1024 values, then double
      for (int64_t i = i0; i < std::min(e, i0 + 1024); ++i) block += x[i] * x[i];
      s += block;
    }
    partial[static_cast<size_t>(t)] = s;
  });
  double s = 0;
  for (double v : partial) s += v;
  return s;
}
}  // namespace

void CpuBackend::sgd_step(float* param, float* buf, const float* grad, size_t n, float lr, float momentum,
                          float weight_decay) {
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float g = grad[i] + weight_decay * param[i];
      buf[i] = momentum * buf[i] + g;
      param[i] -= lr * buf[i];
    }
  });
}

void CpuBackend::lars_step(float* param, float* buf, const float* grad, size_t n, float lr, float momentum,
                           float weight_decay, float trust, bool adapt) {
  float scale = 1.f;
  if (adapt) {
    // ||g|| with g = grad + wd p, and ||p||, in double.
    std::vector<double> pp(static_cast<size_t>(pool().size()), 0.0), gg(pp.size(), 0.0);
    // Four independent double sums per norm (lane i % 4), added at the end: one dependent chain of
    // double adds ran at its latency (the default pretrain's backbone LARS step 0.78 ms, of which ~0.6
    // ms the norms; SGD 0.09 ms).
    pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int t) {
      double sp[4] = {0, 0, 0, 0}, sg[4] = {0, 0, 0, 0};
      const double wd = weight_decay;
      int64_t i = b;
      for (; i + 4 <= e; i += 4)
        for (int l = 0; l < 4; ++l) {
          const double p = param[i + l], g = static_cast<double>(grad[i + l]) + wd * p;
          sp[l] += p * p;
          sg[l] += g * g;
        }
      for (; i < e; ++i) {
        const double p = param[i], g = static_cast<double>(grad[i]) + wd * p;
        sp[0] += p * p;
        sg[0] += g * g;
      }
      pp[static_cast<size_t>(t)] = (sp[0] + sp[1]) + (sp[2] + sp[3]);
      gg[static_cast<size_t>(t)] = (sg[0] + sg[1]) + (sg[2] + sg[3]);
    });
    double sp = 0, sg = 0;
    for (size_t t = 0; t < pp.size(); ++t) {
      sp += pp[t];
      sg += gg[t];
    }
    const double pn = std::sqrt(sp), gn = std::sqrt(sg);
    if (pn > 0 && gn > 0) scale = static_cast<float>(trust * pn / gn);
  }
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float g = (grad[i] + weight_decay * param[i]) * scale;
      buf[i] = momentum * buf[i] + g;
      param[i] -= lr * buf[i];
    }
  });
}

void CpuBackend::ema_update(float* target, const float* online, size_t n, float m) {
  const float one_minus = 1.f - m;
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) target[i] = m * target[i] + one_minus * online[i];
  });
}

bool CpuBackend::all_finite(const float* x, size_t n) {
  std::vector<char> ok(static_cast<size_t>(pool().size()), 1);
  pool().parallel_for(static_cast<int64_t>(n), kGrain, [&](int64_t b, int64_t e, int t) {
    // On the bits: the exponent field plus one carries into bit 31 exactly for inf/NaN (all ones).
    // An integer OR reduction vectorises (a float sum, the earlier x - x test, ran one add per
    // element at a time: 1% of a training step).
    const uint32_t* u = reinterpret_cast<const uint32_t*>(x);
    uint32_t acc = 0;
    for (int64_t i = b; i < e; ++i) acc |= (u[i] & 0x7f800000u) + 0x00800000u;
    if (acc & 0x80000000u) ok[static_cast<size_t>(t)] = 0;
  });
  for (char c : ok)
    if (!c) return false;
  return true;
}

double CpuBackend::sum_squares(const float* x, size_t n) { return sum_squares_impl(pool(), x, n); }

}  // namespace mveb
