// winograd_transforms.h: the Winograd F(2x2, 3x3) and F(4x4, 3x3) data transforms of conv.cpp
// (input tiles B^T d B, output-gradient tiles A dY A^T, output tiles A^T m A), the filter transforms
// (G g G^T) and backward weight's finish (dg = G^T dU G), loops over channels that the compiler vectorises. The output transforms
// can write y with non-temporal stores (stream: AVX-512 copy, K a multiple of 16, y 64-byte aligned)
// or add to it (add: backward data into a residual's gradient). Compiled once per ISA (conv.cpp baseline, conv_avx2.cpp,
// conv_avx512.cpp: the transforms are a third to a half of a shallow Winograd convolution's time
// and baseline x86-64 has only 4-wide SSE); each copy has internal linkage (anonymous namespace)
// so the copies built with different flags never mix. conv.cpp picks one by the backend's ISA
// (winograd_transforms). Tested through test/native/test_kernels.cpp ("kernels: conv ...") with
// MVEB_ISA=scalar|avx2|avx512.
#pragma once
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/backend.h"
#include "cpu/kernel_util.h"  // can_stream_rows

namespace mveb {

// One ISA's transforms; the argument lists are those of the functions below.
struct WinogradTransforms {
  void (*input2)(float*, int64_t, const float*, const ConvShape&, int, int, int64_t, int, const float*);
  void (*input4)(float*, int64_t, const float*, const ConvShape&, int, int, int64_t, int, const float*);
  void (*zt2)(float*, int64_t, const float*, int, int, int, int, int, int64_t, int, const float*);
  void (*zt4)(float*, int64_t, const float*, int, int, int, int, int, int64_t, int, const float*);
  void (*out2)(float*, const float*, int64_t, int, int, int, int, int, int64_t, int, float*, bool, bool);
  void (*out4)(float*, const float*, int64_t, int, int, int, int, int, int64_t, int, float*, bool, bool);
  void (*finish2)(float*, int, int, const float* const*, int, int64_t, int, int, int, int);
  void (*finish4)(float*, int, int, const float* const*, int, int64_t, int, int, int, int);
  void (*filter2)(float*, int64_t, const float*, bool, int, int, int64_t, int64_t);
  void (*filter4)(float*, int64_t, const float*, bool, int, int, int64_t, int64_t);
};
WinogradTransforms winograd_transforms_scalar();
WinogradTransforms winograd_transforms_avx2();
WinogradTransforms winograd_transforms_avx512();

namespace {
namespace wt {

// V_e[i, c] = (B^T d B)_e (matrix e at V + e * vst) for the 4x4 input tiles of output tiles
// [t0, t0 + nt) (TP x TQ tiles per image); zeros: C zeros for the padding.
void input2(float* V, int64_t vst, const float* x, const ConvShape& s, int TP, int TQ, int64_t t0, int nt,
               const float* zeros) {
  const int C = s.C;
  for (int i = 0; i < nt; ++i) {
    const int64_t tile = t0 + i;
    const int tq = static_cast<int>(tile % TQ), tp = static_cast<int>((tile / TQ) % TP);
    const int64_t n = tile / (static_cast<int64_t>(TP) * TQ);
    const float* src[4][4];
    #pragma GCC unroll 16
    for (int a = 0; a < 4; ++a)
      #pragma GCC unroll 16
      for (int b = 0; b < 4; ++b) {
        const int h = 2 * tp - s.pad + a, w = 2 * tq - s.pad + b;
        src[a][b] = (h >= 0 && h < s.H && w >= 0 && w < s.W) ? x + ((n * s.H + h) * s.W + w) * C : zeros;
      }
    float* __restrict v = V + static_cast<int64_t>(i) * C;
#pragma GCC ivdep
    for (int c = 0; c < C; ++c) {
      float d[4][4], r[4][4];
      #pragma GCC unroll 16
      for (int a = 0; a < 4; ++a)
        #pragma GCC unroll 16
        for (int b = 0; b < 4; ++b) d[a][b] = src[a][b][c];
      #pragma GCC unroll 16
      for (int b = 0; b < 4; ++b) {  // r = B^T d
        r[0][b] = d[0][b] - d[2][b];
        r[1][b] = d[1][b] + d[2][b];
        r[2][b] = d[2][b] - d[1][b];
        r[3][b] = d[1][b] - d[3][b];
      }
      #pragma GCC unroll 16
      for (int a = 0; a < 4; ++a) {  // (B^T d) B
        v[(a * 4 + 0) * vst + c] = r[a][0] - r[a][2];
        v[(a * 4 + 1) * vst + c] = r[a][1] + r[a][2];
        v[(a * 4 + 2) * vst + c] = r[a][2] - r[a][1];
        v[(a * 4 + 3) * vst + c] = r[a][1] - r[a][3];
      }
    }
  }
}


void input4(float* V, int64_t vst, const float* x, const ConvShape& s, int TP, int TQ, int64_t t0, int nt,
               const float* zeros) {
  const int C = s.C;
  for (int i = 0; i < nt; ++i) {
    const int64_t tile = t0 + i;
    const int tq = static_cast<int>(tile % TQ), tp = static_cast<int>((tile / TQ) % TP);
    const int64_t n = tile / (static_cast<int64_t>(TP) * TQ);
    const float* src[6][6];
    for (int a = 0; a < 6; ++a)
      for (int b = 0; b < 6; ++b) {
        const int h = 4 * tp - s.pad + a, w = 4 * tq - s.pad + b;
        src[a][b] = (h >= 0 && h < s.H && w >= 0 && w < s.W) ? x + ((n * s.H + h) * s.W + w) * C : zeros;
      }
    float* __restrict v = V + static_cast<int64_t>(i) * C;
#pragma GCC ivdep
    for (int c = 0; c < C; ++c) {
      float r[6][6];
      #pragma GCC unroll 6
      for (int b = 0; b < 6; ++b) {  // r = B^T d, column b
        const float d0 = src[0][b][c], d1 = src[1][b][c], d2 = src[2][b][c], d3 = src[3][b][c],
                    d4 = src[4][b][c], d5 = src[5][b][c];
        r[0][b] = 4.f * d0 - 5.f * d2 + d4;
        r[1][b] = (d3 + d4) - 4.f * (d1 + d2);
        r[2][b] = (d4 - d3) + 4.f * (d1 - d2);
        r[3][b] = (d4 - d2) + 2.f * (d3 - d1);
        r[4][b] = (d4 - d2) + 2.f * (d1 - d3);
        r[5][b] = 4.f * d1 - 5.f * d3 + d5;
      }
      #pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) {  // (B^T d) B, row a
        const float d0 = r[a][0], d1 = r[a][1], d2 = r[a][2], d3 = r[a][3], d4 = r[a][4], d5 = r[a][5];
        v[(a * 6 + 0) * vst + c] = 4.f * d0 - 5.f * d2 + d4;
        v[(a * 6 + 1) * vst + c] = (d3 + d4) - 4.f * (d1 + d2);
        v[(a * 6 + 2) * vst + c] = (d4 - d3) + 4.f * (d1 - d2);
        v[(a * 6 + 3) * vst + c] = (d4 - d2) + 2.f * (d3 - d1);
        v[(a * 6 + 4) * vst + c] = (d4 - d2) + 2.f * (d1 - d3);
        v[(a * 6 + 5) * vst + c] = 4.f * d1 - 5.f * d3 + d5;
      }
    }
  }
}


void zt2(float* Z, int64_t zst, const float* dy, int P, int Q, int K, int TP, int TQ, int64_t t0, int nt,
         const float* zeros) {
  // Z_e[i, k] = (A dY A^T)_e, A = [1 0; 1 1; 1 -1; 0 -1].
  for (int i = 0; i < nt; ++i) {
    const int64_t tile = t0 + i;
    const int tq = static_cast<int>(tile % TQ), tp = static_cast<int>((tile / TQ) % TP);
    const int64_t n = tile / (static_cast<int64_t>(TP) * TQ);
    const int p0 = 2 * tp, q0 = 2 * tq;
    const float* g00 = dy + ((n * P + p0) * Q + q0) * K;
    const float* g01 = q0 + 1 < Q ? g00 + K : zeros;
    const float* g10 = p0 + 1 < P ? g00 + static_cast<int64_t>(Q) * K : zeros;
    const float* g11 = (p0 + 1 < P && q0 + 1 < Q) ? g00 + static_cast<int64_t>(Q + 1) * K : zeros;
    float* __restrict z = Z + static_cast<int64_t>(i) * K;
#pragma GCC ivdep
    for (int k = 0; k < K; ++k) {
      const float a = g00[k], b = g01[k], c = g10[k], d = g11[k];
      // rows of A dY: [a b], [a+c b+d], [a-c b-d], [-c -d]; then times A^T on the right
      const float r[4][2] = {{a, b}, {a + c, b + d}, {a - c, b - d}, {-c, -d}};
      #pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        z[(u * 4 + 0) * zst + k] = r[u][0];
        z[(u * 4 + 1) * zst + k] = r[u][0] + r[u][1];
        z[(u * 4 + 2) * zst + k] = r[u][0] - r[u][1];
        z[(u * 4 + 3) * zst + k] = -r[u][1];
      }
    }
  }
}

void zt4(float* Z, int64_t zst, const float* dy, int P, int Q, int K, int TP, int TQ, int64_t t0, int nt,
         const float* zeros) {
  // Z_e[i, k] = (A dY A^T)_e, A = A^T's transpose, A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
  for (int i = 0; i < nt; ++i) {
    const int64_t tile = t0 + i;
    const int tq = static_cast<int>(tile % TQ), tp = static_cast<int>((tile / TQ) % TP);
    const int64_t n = tile / (static_cast<int64_t>(TP) * TQ);
    const int p0 = 4 * tp, q0 = 4 * tq;
    const float* g[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        g[a][b] = (p0 + a < P && q0 + b < Q) ? dy + ((n * P + p0 + a) * Q + q0 + b) * K : zeros;
    float* __restrict z = Z + static_cast<int64_t>(i) * K;
#pragma GCC ivdep
    for (int k = 0; k < K; ++k) {
      float r[6][4];
      #pragma GCC unroll 4
      for (int b = 0; b < 4; ++b) {  // A dY, column b
        const float y0 = g[0][b][k], y1 = g[1][b][k], y2 = g[2][b][k], y3 = g[3][b][k];
        const float s02 = y0 + y2, s13 = y1 + y3, u02 = y0 + 4.f * y2, u13 = 2.f * y1 + 8.f * y3;
        r[0][b] = y0;
        r[1][b] = s02 + s13;
        r[2][b] = s02 - s13;
        r[3][b] = u02 + u13;
        r[4][b] = u02 - u13;
        r[5][b] = y3;
      }
      #pragma GCC unroll 6
      for (int a = 0; a < 6; ++a) {  // (A dY) A^T, row a
        const float y0 = r[a][0], y1 = r[a][1], y2 = r[a][2], y3 = r[a][3];
        const float s02 = y0 + y2, s13 = y1 + y3, u02 = y0 + 4.f * y2, u13 = 2.f * y1 + 8.f * y3;
        z[(a * 6 + 0) * zst + k] = y0;
        z[(a * 6 + 1) * zst + k] = s02 + s13;
        z[(a * 6 + 2) * zst + k] = s02 - s13;
        z[(a * 6 + 3) * zst + k] = u02 + u13;
        z[(a * 6 + 4) * zst + k] = u02 - u13;
        z[(a * 6 + 5) * zst + k] = y3;
      }
    }
  }
}

// y[.] = v, or y[.] += v (kAdd: the output transforms of a backward data that adds into dx).
template <bool kAdd>
inline void put(float* y, float v) {
  if (kAdd) *y += v;
  else *y = v;
}

template <bool kAdd>
void out2_tiles(float* y, const float* M, int64_t mst, int P, int Q, int K, int TP, int TQ, int64_t t0, int nt,
                float* spare, bool stream) {
  // y tile = A^T m A (kAdd: y +=), the outputs inside P x Q.
  stream = !kAdd && can_stream_rows(stream, y, K);
  for (int i = 0; i < nt; ++i) {
    const int64_t tile = t0 + i;
    const int tq = static_cast<int>(tile % TQ), tp = static_cast<int>((tile / TQ) % TP);
    const int64_t n = tile / (static_cast<int64_t>(TP) * TQ);
    const int p0 = 2 * tp, q0 = 2 * tq;
    const bool p1 = p0 + 1 < P, q1 = q0 + 1 < Q;
    float* y00 = y + ((n * P + p0) * Q + q0) * K;
    float* y01 = y00 + K;
    float* y10 = y00 + static_cast<int64_t>(Q) * K;
    float* y11 = y10 + K;
    const float* __restrict m = M + static_cast<int64_t>(i) * K;
    // Edge tiles write their missing outputs into the thread's spare row instead.
    if (!q1) y01 = spare, y11 = spare;
    if (!p1) y10 = spare, y11 = spare;
#if defined(__AVX512F__)
    if (stream) {
      for (int k = 0; k < K; k += 16) {
        __m512 mm[4][4], r[2][4];
        for (int e = 0; e < 16; ++e) mm[e / 4][e % 4] = _mm512_loadu_ps(m + e * mst + k);
        for (int b = 0; b < 4; ++b) {  // A^T m
          r[0][b] = mm[0][b] + mm[1][b] + mm[2][b];
          r[1][b] = mm[1][b] - mm[2][b] - mm[3][b];
        }
        _mm512_stream_ps(y00 + k, r[0][0] + r[0][1] + r[0][2]);
        _mm512_stream_ps(y01 + k, r[0][1] - r[0][2] - r[0][3]);
        _mm512_stream_ps(y10 + k, r[1][0] + r[1][1] + r[1][2]);
        _mm512_stream_ps(y11 + k, r[1][1] - r[1][2] - r[1][3]);
      }
      continue;
    }
#endif
#pragma GCC ivdep
    for (int k = 0; k < K; ++k) {
      float mm[4][4], r[2][4];
      #pragma GCC unroll 16
      for (int e = 0; e < 16; ++e) mm[e / 4][e % 4] = m[e * mst + k];
      #pragma GCC unroll 16
      for (int b = 0; b < 4; ++b) {  // A^T m
        r[0][b] = mm[0][b] + mm[1][b] + mm[2][b];
        r[1][b] = mm[1][b] - mm[2][b] - mm[3][b];
      }
      put<kAdd>(y00 + k, r[0][0] + r[0][1] + r[0][2]);
      put<kAdd>(y01 + k, r[0][1] - r[0][2] - r[0][3]);
      put<kAdd>(y10 + k, r[1][0] + r[1][1] + r[1][2]);
      put<kAdd>(y11 + k, r[1][1] - r[1][2] - r[1][3]);
    }
  }
#if defined(__AVX512F__)
  if (stream) _mm_sfence();  // the streamed lines are visible before the pool's region ends
#endif
}

// add: y += the transform (never streamed: y is read anyway), else y = it.
void out2(float* y, const float* M, int64_t mst, int P, int Q, int K, int TP, int TQ, int64_t t0, int nt,
          float* spare, bool stream, bool add) {
  if (add) out2_tiles<true>(y, M, mst, P, Q, K, TP, TQ, t0, nt, spare, stream);
  else out2_tiles<false>(y, M, mst, P, Q, K, TP, TQ, t0, nt, spare, stream);
}

template <bool kAdd>
void out4_tiles(float* y, const float* M, int64_t mst, int P, int Q, int K, int TP, int TQ, int64_t t0, int nt,
                float* spare, bool stream) {
  // y tile = A^T m A (kAdd: y +=), the outputs inside P x Q (the others go to the thread's spare row).
  stream = !kAdd && can_stream_rows(stream, y, K);
    for (int i = 0; i < nt; ++i) {
    const int64_t tile = t0 + i;
    const int tq = static_cast<int>(tile % TQ), tp = static_cast<int>((tile / TQ) % TP);
    const int64_t n = tile / (static_cast<int64_t>(TP) * TQ);
    const int p0 = 4 * tp, q0 = 4 * tq;
    float* yo[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        yo[a][b] = (p0 + a < P && q0 + b < Q) ? y + ((n * P + p0 + a) * Q + q0 + b) * K : spare;
    const float* __restrict m = M + static_cast<int64_t>(i) * K;
#if defined(__AVX512F__)
    if (stream) {
      for (int k = 0; k < K; k += 16) {
        __m512 r[4][6];
        for (int b = 0; b < 6; ++b) {  // A^T m, column b
          const __m512 m0 = _mm512_loadu_ps(m + (0 * 6 + b) * mst + k), m1 = _mm512_loadu_ps(m + (1 * 6 + b) * mst + k),
                       m2 = _mm512_loadu_ps(m + (2 * 6 + b) * mst + k), m3 = _mm512_loadu_ps(m + (3 * 6 + b) * mst + k),
                       m4 = _mm512_loadu_ps(m + (4 * 6 + b) * mst + k), m5 = _mm512_loadu_ps(m + (5 * 6 + b) * mst + k);
          const __m512 s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
          r[0][b] = m0 + s12 + s34;
          r[1][b] = d12 + 2.f * d34;
          r[2][b] = s12 + 4.f * s34;
          r[3][b] = d12 + 8.f * d34 + m5;
        }
        for (int a = 0; a < 4; ++a) {  // (A^T m) A, row a
          const __m512 m0 = r[a][0], m5 = r[a][5];
          const __m512 s12 = r[a][1] + r[a][2], d12 = r[a][1] - r[a][2], s34 = r[a][3] + r[a][4],
                       d34 = r[a][3] - r[a][4];
          _mm512_stream_ps(yo[a][0] + k, m0 + s12 + s34);
          _mm512_stream_ps(yo[a][1] + k, d12 + 2.f * d34);
          _mm512_stream_ps(yo[a][2] + k, s12 + 4.f * s34);
          _mm512_stream_ps(yo[a][3] + k, d12 + 8.f * d34 + m5);
        }
      }
      continue;
    }
#endif
#pragma GCC ivdep
    for (int k = 0; k < K; ++k) {
      float r[4][6];
      #pragma GCC unroll 6
      for (int b = 0; b < 6; ++b) {  // A^T m, column b
        const float m0 = m[(0 * 6 + b) * mst + k], m1 = m[(1 * 6 + b) * mst + k], m2 = m[(2 * 6 + b) * mst + k],
                    m3 = m[(3 * 6 + b) * mst + k], m4 = m[(4 * 6 + b) * mst + k], m5 = m[(5 * 6 + b) * mst + k];
        const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        r[0][b] = m0 + s12 + s34;
        r[1][b] = d12 + 2.f * d34;
        r[2][b] = s12 + 4.f * s34;
        r[3][b] = d12 + 8.f * d34 + m5;
      }
      #pragma GCC unroll 4
      for (int a = 0; a < 4; ++a) {  // (A^T m) A, row a
        const float m0 = r[a][0], m5 = r[a][5];
        const float s12 = r[a][1] + r[a][2], d12 = r[a][1] - r[a][2], s34 = r[a][3] + r[a][4],
                    d34 = r[a][3] - r[a][4];
        put<kAdd>(yo[a][0] + k, m0 + s12 + s34);
        put<kAdd>(yo[a][1] + k, d12 + 2.f * d34);
        put<kAdd>(yo[a][2] + k, s12 + 4.f * s34);
        put<kAdd>(yo[a][3] + k, d12 + 8.f * d34 + m5);
      }
    }
  }
#if defined(__AVX512F__)
  if (stream) _mm_sfence();
#endif
}

void out4(float* y, const float* M, int64_t mst, int P, int Q, int K, int TP, int TQ, int64_t t0, int nt,
          float* spare, bool stream, bool add) {
  if (add) out4_tiles<true>(y, M, mst, P, Q, K, TP, TQ, t0, nt, spare, stream);
  else out4_tiles<false>(y, M, mst, P, Q, K, TP, TQ, t0, nt, spare, stream);
}

// Backward weight's finish for the block of channels [c0, c0 + cn) x output channels [k0, k0 + kn)
// (cn <= kFinishC, kn <= kFinishK): dw[k, tap, c] += (G^T S G)[tap] with S_q[c, k] = the sum over
// the nparts partial sums parts[i][q * pst + c * K + k]. Vectorised along k (the contiguous
// dimension of the partial sums), the results transposed through a block buffer so that dw is
// updated along c, kFinishC floats (one cache line) per row of dw. The partial sums, 4x dw's size
// for F(4x4), are read kFinishK floats (4 cache lines) at a time per row (with 1 line per row, as
// before, every line was a separate miss: C K rows apart): two threads, backward weight N128 C512
// 4x4 16.2-16.9 -> 14.5-15.0 ms, C256 8x8 11.8-13.5 -> 11.6-12.4 ms, C128 16x16 and C64 32x32 even
// (kFinishK 16 / kFinishC 64 before; 32 / 32 in between).
constexpr int kFinishC = 16, kFinishK = 64;

// S[q][k] = the sum over the nparts partial sums of parts[i][q * pst + c * K + k0 + k], q < Q, k < kn:
// the gathered G^T S G input of the backward-weight finish (float for F(2x2), double for F(4x4)).
template <int Q, typename T>
inline void sum_partials(T (*S)[kFinishK], const float* const* parts, int nparts, int64_t pst, int c, int K, int k0, int kn) {
  for (int q = 0; q < Q; ++q) {
    const float* src = parts[0] + q * pst + static_cast<int64_t>(c) * K + k0;
    for (int k = 0; k < kn; ++k) S[q][k] = src[k];
    for (int i = 1; i < nparts; ++i) {
      const float* o = parts[i] + q * pst + static_cast<int64_t>(c) * K + k0;
      for (int k = 0; k < kn; ++k) S[q][k] += o[k];
    }
  }
}

void finish2(float* dw, int C, int K, const float* const* parts, int nparts, int64_t pst, int c0, int cn, int k0,
             int kn) {
  constexpr int B = kFinishK;
  float blk[9][kFinishC][B];  // [tap][c][k]
  for (int c = 0; c < cn; ++c) {
    float S[16][B];
    sum_partials<16>(S, parts, nparts, pst, c0 + c, K, k0, kn);
    for (int k = 0; k < kn; ++k) {
      float t[3][4];  // G^T S, G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]
      #pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const float s0 = S[v][k], s1 = S[4 + v][k], s2 = S[8 + v][k], s3 = S[12 + v][k];
        t[0][v] = s0 + 0.5f * (s1 + s2);
        t[1][v] = 0.5f * (s1 - s2);
        t[2][v] = 0.5f * (s1 + s2) + s3;
      }
      #pragma GCC unroll 3
      for (int r = 0; r < 3; ++r) {  // (G^T S) G
        blk[r * 3 + 0][c][k] = t[r][0] + 0.5f * (t[r][1] + t[r][2]);
        blk[r * 3 + 1][c][k] = 0.5f * (t[r][1] - t[r][2]);
        blk[r * 3 + 2][c][k] = 0.5f * (t[r][1] + t[r][2]) + t[r][3];
      }
    }
  }
  for (int k = 0; k < kn; ++k)
    for (int tap = 0; tap < 9; ++tap) {
      float* row = dw + (static_cast<int64_t>(k0 + k) * 9 + tap) * C + c0;
      for (int c = 0; c < cn; ++c) row[c] += blk[tap][c][k];
    }
}

// The same for F(4x4, 3x3) (36 partial matrices), in double: G^T = [1/4 -1/6 -1/6 1/24 1/24 0;
// 0 -1/6 1/6 1/12 -1/12 0; 0 -1/6 -1/6 1/6 1/6 1].
void finish4(float* dw, int C, int K, const float* const* parts, int nparts, int64_t pst, int c0, int cn, int k0,
             int kn) {
  constexpr int B = kFinishK;
  // G's sixths, twelfths and twenty-fourths as double reciprocals (divisions took ~1.6 ms of a 11 ms
  // C256 14x14 N16 backward weight; the reciprocals' rounding, ~1e-16, vanishes in the float result)
  constexpr double kSixth = 1.0 / 6, kTwelfth = 1.0 / 12, kTwentyFourth = 1.0 / 24;
  float blk[9][kFinishC][B];  // [tap][c][k]
  for (int c = 0; c < cn; ++c) {
    double S[36][B];
    sum_partials<36>(S, parts, nparts, pst, c0 + c, K, k0, kn);
    for (int k = 0; k < kn; ++k) {
      double t[3][6];  // G^T S
      #pragma GCC unroll 6
      for (int v = 0; v < 6; ++v) {
        const double u0 = S[v][k], u1 = S[6 + v][k], u2 = S[12 + v][k], u3 = S[18 + v][k], u4 = S[24 + v][k],
                     u5 = S[30 + v][k];
        t[0][v] = u0 * 0.25 - (u1 + u2) * kSixth + (u3 + u4) * kTwentyFourth;
        t[1][v] = (u2 - u1) * kSixth + (u3 - u4) * kTwelfth;
        t[2][v] = (u3 + u4 - u1 - u2) * kSixth + u5;
      }
      #pragma GCC unroll 3
      for (int r = 0; r < 3; ++r) {  // (G^T S) G
        const double u0 = t[r][0], u1 = t[r][1], u2 = t[r][2], u3 = t[r][3], u4 = t[r][4], u5 = t[r][5];
        blk[r * 3 + 0][c][k] = static_cast<float>(u0 * 0.25 - (u1 + u2) * kSixth + (u3 + u4) * kTwentyFourth);
        blk[r * 3 + 1][c][k] = static_cast<float>((u2 - u1) * kSixth + (u3 - u4) * kTwelfth);
        blk[r * 3 + 2][c][k] = static_cast<float>((u3 + u4 - u1 - u2) * kSixth + u5);
      }
    }
  }
  for (int k = 0; k < kn; ++k)
    for (int tap = 0; tap < 9; ++tap) {
      float* row = dw + (static_cast<int64_t>(k0 + k) * 9 + tap) * C + c0;
      for (int c = 0; c < cn; ++c) row[c] += blk[tap][c][k];
    }
}

// The filter transforms U_e = (G g G^T)_e (matrix e at u + e * ust) for the rows [o0, o1) of the
// dimension not contiguous in w: [K, C] rows (op(B) = U_e^T) for the forward filter w[k, tap, c]
// (flipped = false); [C, K] rows for backward data's flipped one, w[c, 8 - tap, k] (flipped = true;
// C and K are then the convolution's, i.e. the original K and C).
// g[tap] = the 3x3 filter's tap row of row o (length C, or K when flipped).
inline void filter_taps(const float* g[9], const float* w, bool flipped, int C, int K, int64_t o) {
  for (int tap = 0; tap < 9; ++tap) g[tap] = flipped ? w + (o * 9 + 8 - tap) * K : w + (o * 9 + tap) * C;
}

void filter2(float* u, int64_t ust, const float* w, bool flipped, int C, int K, int64_t o0, int64_t o1) {
  const int inner = flipped ? K : C;
  for (int64_t o = o0; o < o1; ++o) {
    const float* g[9];
    filter_taps(g, w, flipped, C, K, o);
    float* __restrict d = u + o * inner;
#pragma GCC ivdep
    for (int i = 0; i < inner; ++i) {
      float t[4][3];
      #pragma GCC unroll 16
      for (int j = 0; j < 3; ++j) {  // t = G g
        const float g0 = g[j][i], g1 = g[3 + j][i], g2 = g[6 + j][i];
        t[0][j] = g0;
        t[1][j] = 0.5f * (g0 + g1 + g2);
        t[2][j] = 0.5f * (g0 - g1 + g2);
        t[3][j] = g2;
      }
      #pragma GCC unroll 16
      for (int r = 0; r < 4; ++r) {  // (G g) G^T
        d[(r * 4 + 0) * ust + i] = t[r][0];
        d[(r * 4 + 1) * ust + i] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
        d[(r * 4 + 2) * ust + i] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
        d[(r * 4 + 3) * ust + i] = t[r][2];
      }
    }
  }
}

// The same for F(4x4, 3x3) (36 matrices).
void filter4(float* u, int64_t ust, const float* w, bool flipped, int C, int K, int64_t o0, int64_t o1) {
  const int inner = flipped ? K : C;
  for (int64_t o = o0; o < o1; ++o) {
    const float* g[9];
    filter_taps(g, w, flipped, C, K, o);
    float* __restrict d = u + o * inner;
#pragma GCC ivdep
    for (int i = 0; i < inner; ++i) {
      float t[6][3];
      #pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {  // t = G g, column j
        const float g0 = g[j][i], g1 = g[3 + j][i], g2 = g[6 + j][i];
        t[0][j] = g0 * (1.f / 4);
        t[1][j] = (g0 + g1 + g2) * (-1.f / 6);
        t[2][j] = (g0 - g1 + g2) * (-1.f / 6);
        t[3][j] = g0 * (1.f / 24) + g1 * (1.f / 12) + g2 * (1.f / 6);
        t[4][j] = g0 * (1.f / 24) - g1 * (1.f / 12) + g2 * (1.f / 6);
        t[5][j] = g2;
      }
      #pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) {  // (G g) G^T, row r
        const float g0 = t[r][0], g1 = t[r][1], g2 = t[r][2];
        d[(r * 6 + 0) * ust + i] = g0 * (1.f / 4);
        d[(r * 6 + 1) * ust + i] = (g0 + g1 + g2) * (-1.f / 6);
        d[(r * 6 + 2) * ust + i] = (g0 - g1 + g2) * (-1.f / 6);
        d[(r * 6 + 3) * ust + i] = g0 * (1.f / 24) + g1 * (1.f / 12) + g2 * (1.f / 6);
        d[(r * 6 + 4) * ust + i] = g0 * (1.f / 24) - g1 * (1.f / 12) + g2 * (1.f / 6);
        d[(r * 6 + 5) * ust + i] = g2;
      }
    }
  }
}

}  // namespace wt
}  // namespace

// Defines the function NAME returning this translation unit's transforms.
#define MVEB_DEFINE_WINOGRAD_TRANSFORMS(NAME) \
  WinogradTransforms NAME() {                                                                                   \
    return {&wt::input2,  &wt::input4,  &wt::zt2,     &wt::zt4,    &wt::out2,                                   \
            &wt::out4,    &wt::finish2, &wt::finish4, &wt::filter2, &wt::filter4};                              \
  }

}  // namespace mveb
