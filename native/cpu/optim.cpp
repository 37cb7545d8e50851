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
// LARS on tensors of one arena in two parallel regions, whatever their number: the tensors are cut
// into blocks of kLarsBlock values (each tensor's last block shorter); pass 1 takes each adapting
// block's sums of p^2 and g^2 (g = grad + wd p; four independent double lanes: one dependent chain of
// double adds ran at its latency), a tensor's norms add its blocks' sums in block order (the same for
// any thread count), and pass 2 updates every block with its tensor's scale. Before, two regions per
// tensor: the default pretrain's two models (~70 tensors, most of a few hundred values) took 3.1 ms
// per step in their optimiser steps. wd(t): tensor t's weight decay.
constexpr size_t kLarsBlock = size_t(1) << 14;
template <typename WeightDecay>
void lars_blocks(ThreadPool& pool, float* param, float* buf, const float* grad,
                 const std::vector<Backend::LarsTensor>& tensors, float lr, float momentum, float trust,
                 const WeightDecay& wd) {
  struct Block {
    size_t begin, end, tensor;
  };
  std::vector<Block> blocks;
  for (size_t t = 0; t < tensors.size(); ++t)
    for (size_t b = 0; b < tensors[t].numel; b += kLarsBlock)
      blocks.push_back({tensors[t].offset + b, tensors[t].offset + std::min(tensors[t].numel, b + kLarsBlock), t});
  const int64_t nb = static_cast<int64_t>(blocks.size());
  std::vector<double> sums(blocks.size() * 2, 0.0);  // block i: sum p^2, sum g^2
  pool.parallel_for(nb, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const Block& blk = blocks[static_cast<size_t>(bi)];
      if (!tensors[blk.tensor].adapt) continue;
      double sp[4] = {0, 0, 0, 0}, sg[4] = {0, 0, 0, 0};
      const double d = wd(blk.tensor);
      size_t i = blk.begin;
      for (; i + 4 <= blk.end; i += 4)
        for (int l = 0; l < 4; ++l) {
          const double p = param[i + l], g = static_cast<double>(grad[i + l]) + d * p;
          sp[l] += p * p;
          sg[l] += g * g;
        }
      for (; i < blk.end; ++i) {
        const double p = param[i], g = static_cast<double>(grad[i]) + d * p;
        sp[0] += p * p;
        sg[0] += g * g;
      }
      sums[static_cast<size_t>(bi) * 2] = (sp[0] + sp[1]) + (sp[2] + sp[3]);
      sums[static_cast<size_t>(bi) * 2 + 1] = (sg[0] + sg[1]) + (sg[2] + sg[3]);
    }
  });
  std::vector<double> pn(tensors.size(), 0.0), gn(tensors.size(), 0.0);
  for (size_t bi = 0; bi < blocks.size(); ++bi)
    pn[blocks[bi].tensor] += sums[bi * 2], gn[blocks[bi].tensor] += sums[bi * 2 + 1];
  std::vector<float> scale(tensors.size(), 1.f);
  for (size_t t = 0; t < tensors.size(); ++t) {
    const double p = std::sqrt(pn[t]), g = std::sqrt(gn[t]);
    if (tensors[t].adapt && p > 0 && g > 0) scale[t] = static_cast<float>(trust * p / g);
  }
  pool.parallel_for(nb, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const Block& blk = blocks[static_cast<size_t>(bi)];
      const float d = wd(blk.tensor), sc = scale[blk.tensor];
      for (size_t i = blk.begin; i < blk.end; ++i) {
        const float g = (grad[i] + d * param[i]) * sc;
        buf[i] = momentum * buf[i] + g;
        param[i] -= lr * buf[i];
      }
    }
  });
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
  // (one tensor: the weight decay as given, also without adapt, as the base contract says)
  lars_blocks(pool(), param, buf, grad, {{0, n, adapt}}, lr, momentum, trust, [&](size_t) { return weight_decay; });
}

void CpuBackend::lars_step_tensors(float* param, float* buf, const float* grad, const std::vector<LarsTensor>& tensors,
                                   float lr, float momentum, float weight_decay, float trust) {
  lars_blocks(pool(), param, buf, grad, tensors, lr, momentum, trust,
              [&](size_t t) { return tensors[t].adapt ? weight_decay : 0.f; });
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
