// direct_conv.h: direct convolution for few channels (C, K <= 16, except 3x3 stride-1 layers with 16
// of both, where Winograd is faster: the default pretrain encoder's stem, 8-channel layers and strided
// layers), compiled once per ISA like winograd_transforms.h (conv.cpp baseline,
// conv_avx2.cpp, conv_avx512.cpp; internal linkage per copy). Each output pixel's K channels are one
// accumulator row of KP (8 or 16) floats; every (tap, input channel) pair broadcasts one input value
// against a KP-wide filter row, for four neighbouring output pixels at once where all their taps lie
// inside the image (one filter load per kGroup FMAs), else pixel by pixel. The GEMM paths waste most of
// a 14 x 32 micro-tile on such shapes (N512 C8 K8 28x28 3x3 forward: Winograd 7.8-8.3 ms, this 4.6).
// Tested by test/native/test_kernels.cpp ("kernels: conv ...": the shapes with C, K <= 16).
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/backend.h"  // ConvShape

namespace mveb {

constexpr int kDirectMaxChannels = 16;  // C and K up to this take the direct path

// Output rows [row0, row1) (row = (n P + p) Q + q) of y [rows, K] from x (NHWC) and the filter wt:
// row (r S + s) C + c of KP floats (KP = 8 for K <= 8, else 16) holds the taps' K output channels,
// zero past K. Runs on the calling thread.
using DirectConvRows = void (*)(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0,
                                int64_t row1);
// The weight gradient's part from output rows [row0, row1): acc row (r S + s) C + c (KP floats, the K
// output channels, zero past K) += sum over those rows of x at the tap times dy's row; along each
// output line, tap by tap, 8 input channels' accumulators in registers at a time.
using DirectWeightRows = void (*)(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0,
                                  int64_t row1);
struct DirectConv {
  DirectConvRows rows8, rows16;
  DirectWeightRows weight8, weight16;
};
DirectConv direct_conv_scalar();
DirectConv direct_conv_avx2();
DirectConv direct_conv_avx512();

namespace {
namespace dck {

// A filter row of KP floats as one GCC vector (the ISA's registers: one zmm, two ymm, four xmm).
template <int KP>
struct Vec {
  typedef float type __attribute__((vector_size(KP * sizeof(float))));
};
template <int KP>
inline typename Vec<KP>::type load(const float* p) {
  typename Vec<KP>::type v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// acc[g] += sum over the input channels of x at pixel g (G pixels from column w, stride apart) times
// the tap's filter rows wt_rs[c].
template <int KP, int G>
inline void taps(typename Vec<KP>::type* acc, const float* xrow, int w, int stride, int C, const float* wt_rs) {
  for (int c = 0; c < C; ++c) {
    const typename Vec<KP>::type wv = load<KP>(wt_rs + c * KP);
#pragma GCC unroll 8  // (unrolled, the accumulators stay in registers)
    for (int g = 0; g < G; ++g) acc[g] += xrow[static_cast<int64_t>(w + g * stride) * C + c] * wv;
  }
}

template <int KP, int G>
inline void pixels(float* y, const float* x, const float* wt, const ConvShape& s, int64_t n, int p, int q,
                   int64_t row) {
  typename Vec<KP>::type acc[G] = {};
  const int h0 = p * s.stride - s.pad, w0 = q * s.stride - s.pad;
  for (int r = 0; r < s.R; ++r) {
    const int h = h0 + r;
    if (h < 0 || h >= s.H) continue;
    const float* xrow = x + (n * s.H + h) * static_cast<int64_t>(s.W) * s.C;
    for (int ss = 0; ss < s.S; ++ss) {
      const int w = w0 + ss;
      if (G == 1 && (w < 0 || w >= s.W)) continue;  // (G = 4: all taps inside, checked by the caller)
      taps<KP, G>(acc, xrow, w, s.stride, s.C, wt + static_cast<int64_t>(r * s.S + ss) * s.C * KP);
    }
  }
  for (int g = 0; g < G; ++g) {
    float out[KP];
    __builtin_memcpy(out, &acc[g], sizeof out);
    for (int k = 0; k < s.K; ++k) y[(row + g) * s.K + k] = out[k];
  }
}

// Pixels per group: each an independent chain of FMAs, their accumulators in registers (N512 C8 K8
// 28x28 3x3 forward: 4.6 ms; groups of 4: latency-bound; accumulators in memory: 8.4-9.7 ms).
constexpr int kGroup = 8;

template <int KP>
void rows(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0, int64_t row1) {
  const int P = s.P(), Q = s.Q();
  for (int64_t row = row0; row < row1;) {
    const int q = static_cast<int>(row % Q);
    const int64_t np = row / Q;
    const int p = static_cast<int>(np % P);
    const int64_t n = np / P;
    const int w_first = q * s.stride - s.pad, w_last = (q + kGroup - 1) * s.stride - s.pad + s.S - 1;
    if (q + kGroup - 1 < Q && row + kGroup - 1 < row1 && w_first >= 0 && w_last < s.W) {
      pixels<KP, kGroup>(y, x, wt, s, n, p, q, row);
      row += kGroup;
    } else {
      pixels<KP, 1>(y, x, wt, s, n, p, q, row);
      row += 1;
    }
  }
}

template <int KP>
void weight(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  typedef typename Vec<KP>::type vk;
  const int P = s.P(), Q = s.Q(), C = s.C, K = s.K;
  for (int64_t row = row0; row < row1;) {  // one output line (n, p), columns [q0, q1), at a time
    const int64_t np = row / Q;
    const int q0 = static_cast<int>(row % Q);
    const int q1 = static_cast<int>(std::min<int64_t>(Q, q0 + (row1 - row)));
    const int64_t n = np / P;
    const int p = static_cast<int>(np % P);
    const float* dline = dy + np * Q * static_cast<int64_t>(K);
    for (int r = 0; r < s.R; ++r) {
      const int h = p * s.stride - s.pad + r;
      if (h < 0 || h >= s.H) continue;
      const float* xline = x + (n * s.H + h) * static_cast<int64_t>(s.W) * C;
      for (int ss = 0; ss < s.S; ++ss) {
        int qlo = q0, qhi = q1;  // the columns whose tap lies inside the image
        while (qlo < qhi && qlo * s.stride - s.pad + ss < 0) ++qlo;
        while (qhi > qlo && (qhi - 1) * s.stride - s.pad + ss >= s.W) --qhi;
        for (int c0 = 0; c0 < C; c0 += 8) {
          const int nc = C - c0 < 8 ? C - c0 : 8;
          vk a[8] = {};
          for (int q = qlo; q < qhi; ++q) {
            vk d;
            if (K == KP) {
              d = load<KP>(dline + static_cast<int64_t>(q) * K);
            } else {
              float t[KP] = {};
              for (int k = 0; k < K; ++k) t[k] = dline[static_cast<int64_t>(q) * K + k];
              __builtin_memcpy(&d, t, sizeof d);
            }
            const float* xp = xline + static_cast<int64_t>(q * s.stride - s.pad + ss) * C + c0;
#pragma GCC unroll 8  // (unrolled, the accumulators stay in registers)
            for (int j = 0; j < 8; ++j)
              if (j < nc) a[j] += xp[j] * d;
          }
          float* out = acc + (static_cast<int64_t>(r * s.S + ss) * C + c0) * KP;
          for (int j = 0; j < nc; ++j) {
            float t[KP];
            __builtin_memcpy(t, &a[j], sizeof t);
            for (int k = 0; k < KP; ++k) out[j * KP + k] += t[k];
          }
        }
      }
    }
    row += q1 - q0;
  }
}

}  // namespace dck
}  // namespace

// Defines the function NAME returning this translation unit's direct convolution rows.
#define MVEB_DEFINE_DIRECT_CONV(NAME) \
  DirectConv NAME() { return {&dck::rows<8>, &dck::rows<16>, &dck::weight<8>, &dck::weight<16>}; }

}  // namespace mveb
