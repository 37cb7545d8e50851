// pool_kernels.h: the max-pooling forward row loop of pool.cpp, written on GCC vectors of kLanes
// channels (a tail of channels lane by lane), compiled once per ISA (pool.cpp baseline,
// pool_avx2.cpp, pool_avx512.cpp; each copy has internal linkage, so copies built with different
// flags never mix). pool.cpp picks one by the backend's ISA. Each output pixel's channel vector stays
// in registers, with its argmax, across the window's taps (the baseline loop read and wrote both
// per tap: resnet50's 3x3/2 pool over N16 112x112x64, two threads, 5.6-5.8 -> 1.9 ms; kernels_bench pool).
// Semantics as PyTorch: padding never wins, the first maximum in window order wins ties, a NaN wins
// (the last one in window order); argmax is the flat input index ((n * H + h) * W + w) * C + c.
// Tested by test/native/test_kernels.cpp ("kernels: maxpool ...") under every ISA.
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/backend.h"  // PoolShape
#include "cpu/simd_lanes.h"  // kLanes, vf, vi, ld, st

namespace mveb {

// Output rows np in [np0, np1) (np = n * P + p) of y and argmax.
using MaxpoolRows = void (*)(float* y, int32_t* argmax, const float* x, const PoolShape& s, int64_t np0, int64_t np1);
MaxpoolRows maxpool_rows_scalar();
MaxpoolRows maxpool_rows_avx2();
MaxpoolRows maxpool_rows_avx512();

namespace {
namespace pk {
using simd::kLanes;
using simd::ld;
using simd::st;
using simd::vf;
using simd::vi;

// Whether v replaces the current maximum: greater, or a NaN (PyTorch's rule: the last NaN of a window
// is its argmax).
inline vi takes(vf v, vf cur) { return (v > cur) | (v != v); }
inline bool takes(float v, float cur) { return (v > cur) | (v != v); }

void maxpool_rows(float* y, int32_t* argmax, const float* x, const PoolShape& s, int64_t np0, int64_t np1) {
  const int P = s.P(), Q = s.Q(), C = s.C;
  vi lane;
  for (int j = 0; j < kLanes; ++j) lane[j] = j;
  for (int64_t np = np0; np < np1; ++np) {
    const int n = static_cast<int>(np / P), p = static_cast<int>(np % P);
    const int h0 = p * s.stride - s.pad, h_lo = std::max(0, h0), h_hi = std::min(s.H, h0 + s.kernel);
    for (int q = 0; q < Q; ++q) {
      const int w0 = q * s.stride - s.pad, w_lo = std::max(0, w0), w_hi = std::min(s.W, w0 + s.kernel);
      float* yo = y + (np * Q + q) * C;
      int32_t* ao = argmax + (np * Q + q) * C;
      // the window's taps in order, as flat indices of their first channel (pad <= kernel / 2: the
      // first one lies inside the image)
      auto tap = [&](int h, int w) { return static_cast<int32_t>(((static_cast<int64_t>(n) * s.H + h) * s.W + w) * C); };
      const int32_t first = tap(h_lo, w_lo);
      int c = 0;
      for (; c + kLanes <= C; c += kLanes) {
        vf best = ld(x + first + c);
        vi arg = lane + (first + c);
        for (int h = h_lo; h < h_hi; ++h)
          for (int w = w_lo + (h == h_lo ? 1 : 0); w < w_hi; ++w) {
            const int32_t b = tap(h, w) + c;
            const vf v = ld(x + b);
            const vi take = takes(v, best);
            best = take ? v : best;
            arg = take ? lane + b : arg;
          }
        st(yo + c, best);
        st(ao + c, arg);
      }
      for (; c < C; ++c) {
        float best = x[first + c];
        int32_t arg = first + c;
        for (int h = h_lo; h < h_hi; ++h)
          for (int w = w_lo + (h == h_lo ? 1 : 0); w < w_hi; ++w) {
            const int32_t b = tap(h, w) + c;
            if (takes(x[b], best)) best = x[b], arg = b;
          }
        yo[c] = best;
        ao[c] = arg;
      }
    }
  }
}
}  // namespace pk
}  // namespace

// Defines the function NAME returning this translation unit's row loop.
#define MVEB_DEFINE_MAXPOOL_ROWS(NAME) \
  MaxpoolRows NAME() { return &pk::maxpool_rows; }

}  // namespace mveb
