// direct_conv.h: direct convolution for few channels (C, K <= 16: the default pretrain encoder's stem,
// 8- and 16-channel layers and strided layers), compiled once per ISA like winograd_transforms.h
// (conv.cpp baseline, conv_avx2.cpp, conv_avx512.cpp; internal linkage per copy). Each output pixel's
// K channels are one accumulator row of KP (8 or 16) floats; every (tap, input channel) pair
// broadcasts one input value against a KP-wide filter row, for up to eight neighbouring output pixels
// at once, reading the task's input lines copied with their zero padding (no bounds checks; before,
// edge pixels went one at a time, latency-bound: N512 C16 K16 14x14 forward 5.1 -> 3.5 ms one thread,
// below Winograd's 5.1). The GEMM paths waste most of a 14 x 32 micro-tile on such shapes (N512 C8 K8
// 28x28 3x3 forward: Winograd 7.8-8.3 ms, this 4.6).
// With K <= 8 at stride 1 the AVX-512 build uses whole vectors instead: two output pixels per vector
// (rows8_pairs, weight8_pairs; N512 C8 K8 28x28, one thread: 9.1 -> 5.5 ms forward). The AVX-512 build
// also has wide kernels for the stems, C <= 4 with 16 < K <= 64 (wide_rows, wide_weight: up to four
// vectors per pixel, intrinsics; the ImageNet 7x7/2 stem and the CIFAR 3x3 stem at width >= 0.5).
// Tested by test/native/test_kernels.cpp ("kernels: conv ...": the shapes with C, K <= 16).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "core/backend.h"  // ConvShape
#include "cpu/kernel_util.h"  // with_constant

namespace mveb {

constexpr int kDirectMaxChannels = 16;  // C and K up to this take the direct path
constexpr int kDirectWideMaxC = 4, kDirectWideMaxK = 64;  // the wide forward kernel (stems): C, K up to these

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
  // forward and weight gradient for 16 < K <= 64 with filter (gradient) rows of 16 ceil(K / 16) floats
  // (AVX-512 build only; else null)
  DirectConvRows wide_rows;
  DirectWeightRows wide_weight;
};
DirectConv direct_conv_scalar();
DirectConv direct_conv_avx2();
DirectConv direct_conv_avx512();

namespace {
namespace dck {

// Every function here has internal linkage (one copy per ISA's translation unit, never called across
// them), so GCC's note that a vector return's ABI depends on -mavx / -mavx512f (-Wpsabi, from the
// baseline copy in conv.cpp) does not apply: silenced for this header's functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

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

// Calls fn(np, n, p, q0, q1) for each output line segment of rows [row0, row1).
template <typename Fn>
inline void line_segments(const ConvShape& s, int64_t row0, int64_t row1, const Fn& fn) {
  const int P = s.P(), Q = s.Q();
  for (int64_t row = row0; row < row1;) {
    const int64_t np = row / Q;
    const int q0 = static_cast<int>(row % Q);
    const int q1 = static_cast<int>(std::min<int64_t>(Q, q0 + (row1 - row)));
    fn(np, np / P, static_cast<int>(np % P), q0, q1);
    row += q1 - q0;
  }
}

// R buffers of slot_floats floats for the input lines of one task, line h in slot h % R: slot(n, h)
// says whether the slot already holds line h of image n (consecutive output lines share most of
// their input lines, so each line is prepared once per task).
class LineSlots {
 public:
  LineSlots(const ConvShape& s, int64_t slot_floats)
      : s_(s), slot_floats_(slot_floats), buf_(static_cast<size_t>(s.R * slot_floats), 0.f),
        held_(static_cast<size_t>(s.R), -1) {}
  // The slot of line h of image n (nullptr outside the image); fresh: it must be filled now.
  float* slot(int64_t n, int h, bool& fresh) {
    if (h < 0 || h >= s_.H) return nullptr;
    const int slot = h % s_.R;
    const int64_t line = n * s_.H + h;
    fresh = held_[static_cast<size_t>(slot)] != line;
    held_[static_cast<size_t>(slot)] = line;
    return buf_.data() + slot * slot_floats_;
  }
  int64_t slot_floats() const { return slot_floats_; }

 private:
  const ConvShape& s_;
  int64_t slot_floats_;
  std::vector<float> buf_;
  std::vector<int64_t> held_;
};

// The input lines of one task with their zero padding (columns [-pad, (Q - 1) stride + S - pad)
// stored from index 0): every tap of every output pixel then reads inside the buffer.
class PaddedLines {
 public:
  PaddedLines(const float* x, const ConvShape& s)
      : x_(x), s_(s), width_((s.Q() - 1) * s.stride + s.S), slots_(s, static_cast<int64_t>(width_) * s.C) {}
  // Line h of image n (nullptr outside the image).
  const float* line(int64_t n, int h) {
    bool fresh = false;
    float* d = slots_.slot(n, h, fresh);
    if (d && fresh) {
      const int C = s_.C, lo = std::min(s_.pad, width_), hi = std::min(width_, s_.pad + s_.W);  // [lo, hi) from x
      std::fill(d, d + static_cast<int64_t>(lo) * C, 0.f);
      const float* src = x_ + (n * s_.H + h) * s_.W * C;
      if (hi > lo) std::copy(src, src + static_cast<int64_t>(hi - lo) * C, d + static_cast<int64_t>(lo) * C);
      std::fill(d + static_cast<int64_t>(std::max(lo, hi)) * C, d + slots_.slot_floats(), 0.f);
    }
    return d;
  }

 private:
  const float* x_;
  const ConvShape& s_;
  int width_;
  LineSlots slots_;
};

// fn(std::integral_constant<int, G>) for a group of G = 1..8 pixels, pixel pairs or channels (the
// kernels' register tiles; above 8 is 8).
template <typename Fn>
inline void with_group_size(int g, const Fn& fn) {
  if (!with_constant<1, 2, 3, 4, 5, 6, 7>(g, fn)) fn(std::integral_constant<int, 8>{});
}

// Pixels per group: each an independent chain of FMAs, their accumulators in registers (N512 C8 K8
// 28x28 3x3 forward: 4.6 ms; groups of 4: latency-bound; accumulators in memory: 8.4-9.7 ms).
constexpr int kGroup = 8;

// Output pixels [q, q + G) of output line np from the padded input lines (lines[r]: filter row r's
// line, nullptr outside the image).
// (Not inlined, like pair_group below: its accumulators must stay in registers.)
template <int KP, int G>
__attribute__((noinline)) void pixels(float* y, const float* const* lines, const float* wt, const ConvShape& s,
                                      int64_t np, int q) {
  typename Vec<KP>::type acc[G] = {};
  for (int r = 0; r < s.R; ++r) {
    if (!lines[r]) continue;
    for (int ss = 0; ss < s.S; ++ss)
      taps<KP, G>(acc, lines[r], q * s.stride + ss, s.stride, s.C, wt + static_cast<int64_t>(r * s.S + ss) * s.C * KP);
  }
  float* out = y + (np * s.Q() + q) * s.K;
  for (int g = 0; g < G; ++g) {
    if (s.K == KP) {
      __builtin_memcpy(out + g * KP, &acc[g], sizeof acc[g]);
      continue;
    }
    float t[KP];
    __builtin_memcpy(t, &acc[g], sizeof t);
    for (int k = 0; k < s.K; ++k) out[g * s.K + k] = t[k];
  }
}

// The forward's driver over output rows [row0, row1): per output line segment, the task's padded
// input lines of the filter rows (lines[r], nullptr outside the image), and fn(G, lines, np, q) for
// groups of up to MaxGroup pixels from q (G a std::integral_constant), the segment split evenly
// between the groups.
template <int MaxGroup, typename Fn>
void pixel_groups(const float* x, const ConvShape& s, int64_t row0, int64_t row1, const Fn& fn) {
  PaddedLines padded(x, s);
  std::vector<const float*> lines(static_cast<size_t>(s.R));
  line_segments(s, row0, row1, [&](int64_t np, int64_t n, int p, int q0, int q1) {
    for (int r = 0; r < s.R; ++r) lines[static_cast<size_t>(r)] = padded.line(n, p * s.stride - s.pad + r);
    const int count = q1 - q0, groups = (count + MaxGroup - 1) / MaxGroup;
    for (int g = 0, done = 0; g < groups; ++g) {
      const int G = (count - done + (groups - g) - 1) / (groups - g), q = q0 + done;
      with_group_size(G, [&](auto g_) {  // (G <= MaxGroup: the cap only bounds the instantiations)
        fn(std::integral_constant<int, (decltype(g_)::value < MaxGroup ? decltype(g_)::value : MaxGroup)>{},
           static_cast<const float* const*>(lines.data()), np, q);
      });
      done += G;
    }
  });
}

template <int KP>
void rows(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0, int64_t row1) {
  pixel_groups<kGroup>(x, s, row0, row1, [&](auto g, const float* const* lines, int64_t np, int q) {
    pixels<KP, decltype(g)::value>(y, lines, wt, s, np, q);
  });
}

#if defined(__AVX512F__)
// (GCC 12's AVX-512 headers report the undefined upper half of _mm512_castps256_ps512 and the
// intrinsics' internal operand '__Y' as (maybe-)uninitialised: false positives, silenced here.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// K <= 8 at stride 1 (AVX-512 build): two neighbouring output pixels per vector, lane 2k + j holding
// pixel j's channel k, so every FMA uses all 16 lanes (rows<8> and weight<8> use half a vector per
// pixel). Per input line a pair buffer holds, for each column w, the C pairs (x[w][c], x[w + 1][c]);
// each (tap, input channel) then broadcasts one pair (a load) against a 16-float vector: the filter
// row duplicated per pair (forward, backward data), or two pixels' dy rows interleaved (weight).
constexpr int kPairGroup = 8;

// The pair buffers of one task's input lines: entry i = w + pad of line (n, h) for the columns w in
// [-pad, Q + S - 1 - pad), the pair (x[w], x[w + 1]) per channel (2 C floats), zero outside the image;
// output pixel q's tap ss reads entry q + ss. Built once per task (LineSlots).
class PairLines {
 public:
  PairLines(const float* x, const ConvShape& s)
      : x_(x), s_(s), entries_(s.Q() + s.S), slots_(s, static_cast<int64_t>(entries_) * 2 * s.C) {}
  // Line h of image n (nullptr outside the image).
  const float* line(int64_t n, int h) {
    bool fresh = false;
    float* pb = slots_.slot(n, h, fresh);
    if (pb && fresh) {
      const int64_t line = n * s_.H + h;
      build(pb, x_ + line * s_.W * s_.C);
      if (h + 1 < s_.H) {  // the line the next output line will add, on its way while this one computes
        const char* next = reinterpret_cast<const char*>(x_ + (line + 1) * s_.W * s_.C);
        for (int64_t b = 0; b < static_cast<int64_t>(s_.W) * s_.C * 4; b += 64) _mm_prefetch(next + b, _MM_HINT_T0);
      }
    }
    return pb;
  }

 private:
  void build(float* pb, const float* xline) const {
    const int C = s_.C;
    const __m512i interleave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i interleave8 = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    for (int i = 0; i < entries_; ++i) {
      const int w = i - s_.pad;
      const bool in0 = w >= 0 && w < s_.W, in1 = w + 1 >= 0 && w + 1 < s_.W;
      if (C == 8 && in0 && in1) {  // pixels w and w + 1: 16 contiguous floats
        const __m512 ab = _mm512_loadu_ps(xline + static_cast<int64_t>(w) * 8);
        _mm512_storeu_ps(pb + static_cast<int64_t>(i) * 16, _mm512_permutexvar_ps(interleave8, ab));
        continue;
      }
      for (int c0 = 0; c0 < C; c0 += 8) {
        const int nc = C - c0 < 8 ? C - c0 : 8;
        const __mmask8 m = static_cast<__mmask8>((1u << nc) - 1);
        const __m256 a = in0 ? _mm256_maskz_loadu_ps(m, xline + static_cast<int64_t>(w) * C + c0) : _mm256_setzero_ps();
        const __m256 b =
            in1 ? _mm256_maskz_loadu_ps(m, xline + static_cast<int64_t>(w + 1) * C + c0) : _mm256_setzero_ps();
        const __m512 ab = _mm512_permutex2var_ps(_mm512_castps256_ps512(a), interleave, _mm512_castps256_ps512(b));
        const __mmask16 m2 = static_cast<__mmask16>((1u << (2 * nc)) - 1);
        _mm512_mask_storeu_ps(pb + static_cast<int64_t>(i) * 2 * C + 2 * c0, m2, ab);
      }
    }
  }
  const float* x_;
  const ConvShape& s_;
  int entries_;
  LineSlots slots_;
};

// The first 64-byte aligned address at or after p (buffers allocated 16 floats longer).
inline float* aligned64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// The broadcast pair of channel c at pair-buffer entry e.
inline __m512 pair_at(const float* pb, int e, int C, int c) {
  double pair;
  __builtin_memcpy(&pair, pb + static_cast<int64_t>(e) * 2 * C + 2 * c, sizeof pair);
  return _mm512_castpd_ps(_mm512_set1_pd(pair));
}

// acc[a] += the taps of filter row r for the G pairs whose first pixels are q + 2a.
template <int G>
inline void pair_taps(__m512* acc, const float* pb, int q, int C, int S, const float* wd_r) {
  for (int ss = 0; ss < S; ++ss)
    for (int c = 0; c < C; ++c) {
      const __m512 wv = _mm512_loadu_ps(wd_r + (ss * C + c) * 16);
#pragma GCC unroll 8
      for (int a = 0; a < G; ++a) acc[a] = _mm512_fmadd_ps(pair_at(pb, q + 2 * a + ss, C, c), wv, acc[a]);
    }
}

// Pixels [q, q + 2G) of output line np into y, `valid` of them (2G or 2G - 1; the last pair's second
// pixel may lie past the segment).
// (Not inlined: inlined into the line loop, GCC 12 spilled the accumulators to the stack, 5.1 -> 8.2 ms.)
template <int G>
__attribute__((noinline)) void pair_group(float* y, const float* const* pbs, const float* wd, const ConvShape& s,
                                          int64_t np, int q, int valid) {
  __m512 acc[G];
#pragma GCC unroll 8
  for (int a = 0; a < G; ++a) acc[a] = _mm512_setzero_ps();
  for (int r = 0; r < s.R; ++r)
    if (pbs[r]) pair_taps<G>(acc, pbs[r], q, s.C, s.S, wd + static_cast<int64_t>(r) * s.S * s.C * 16);
  const __m512i deinterleave = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  float* out = y + (np * s.Q() + q) * s.K;
#pragma GCC unroll 8
  for (int a = 0; a < G; ++a) {
    const __m512 v = _mm512_permutexvar_ps(deinterleave, acc[a]);  // [pixel 2a: k 0..7 | pixel 2a + 1]
    const int pixels = valid - 2 * a >= 2 ? 2 : 1;
    if (s.K == 8) {
      _mm512_mask_storeu_ps(out + 2 * a * 8, pixels == 2 ? 0xFFFF : 0x00FF, v);
    } else {
      float t[16];
      _mm512_storeu_ps(t, v);
      for (int j = 0; j < pixels; ++j)
        for (int k = 0; k < s.K; ++k) out[(2 * a + j) * s.K + k] = t[8 * j + k];
    }
  }
}

void rows8_pairs(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0, int64_t row1) {
  const int C = s.C, R = s.R, RS = R * s.S;
  // The filter rows duplicated per pair: wd[(tap C + c) 16 + 2k + j] = wt[(tap C + c) 8 + k].
  std::vector<float> wd(static_cast<size_t>(RS) * C * 16);
  for (int i = 0; i < RS * C; ++i)
    for (int k = 0; k < 8; ++k) {
      float* d = wd.data() + static_cast<size_t>(i) * 16 + 2 * k;
      d[0] = d[1] = wt[i * 8 + k];
    }
  PairLines lines(x, s);
  std::vector<const float*> pbs(static_cast<size_t>(R));
  line_segments(s, row0, row1, [&](int64_t np, int64_t n, int p, int q0, int q1) {
    for (int r = 0; r < R; ++r) pbs[static_cast<size_t>(r)] = lines.line(n, p - s.pad + r);
    // groups of up to kPairGroup pairs, the segment's pairs split evenly between the groups
    const int pairs = (q1 - q0 + 1) / 2;
    const int groups = (pairs + kPairGroup - 1) / kPairGroup;
    for (int g = 0, pair = 0; g < groups; ++g) {
      const int np_g = (pairs - pair + (groups - g) - 1) / (groups - g);
      const int q = q0 + 2 * pair, valid = std::min(2 * np_g, q1 - q);
      with_group_size(np_g, [&](auto g_) {
        pair_group<decltype(g_)::value>(y, pbs.data(), wd.data(), s, np, q, valid);
      });
      pair += np_g;
    }
  });
}

// The weight gradient with pairs: per output line segment its dy rows interleaved by pixel pair
// (lane 2k + j: pixel j's dy[k], zero past the segment), then for each (tap, input channel) the sum
// over pairs of the broadcast x pair times the dy pair, in 8 accumulators at a time; the two pixel
// lanes of each channel are added into acc once, at the end of the task (dyp, sums: 16 floats per
// vector).
void weight8_pairs(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  const int C = s.C, K = s.K, R = s.R, S = s.S, RSC = R * S * C;
  PairLines lines(x, s);
  std::vector<float> dyp_buf(static_cast<size_t>((s.Q() + 1) / 2) * 16 + 16);
  float* const dyp = aligned64(dyp_buf.data());
  const std::vector<float> zeros(static_cast<size_t>(s.Q() + S) * 2 * C, 0.f);  // a pair line outside the image
  std::vector<float> sums_buf(static_cast<size_t>(RSC + 8) * 16 + 16, 0.f);  // per (tap, c), over the rows
  float* const sums = aligned64(sums_buf.data());
  std::vector<int> row_of(static_cast<size_t>(RSC)), offset_of(static_cast<size_t>(RSC));  // i = (r S + ss) C + c:
  for (int i = 0; i < RSC; ++i) {  // r, and the offset (ss 2 C + 2 c) of its pair from the pixel's entry
    row_of[static_cast<size_t>(i)] = i / C / S;
    offset_of[static_cast<size_t>(i)] = (i / C % S) * 2 * C + 2 * (i % C);
  }
  std::vector<const float*> pbs(static_cast<size_t>(R));
  const __m512i interleave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i deinterleave = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __mmask8 km = static_cast<__mmask8>((1u << K) - 1);
  line_segments(s, row0, row1, [&](int64_t np, int64_t n, int p, int q0, int q1) {
    const int pairs = (q1 - q0 + 1) / 2;
    const float* drow = dy + np * s.Q() * static_cast<int64_t>(K);
    for (int a = 0; a < pairs; ++a) {
      const int q = q0 + 2 * a;
      const __m256 d0 = _mm256_maskz_loadu_ps(km, drow + static_cast<int64_t>(q) * K);
      const __m256 d1 =
          q + 1 < q1 ? _mm256_maskz_loadu_ps(km, drow + static_cast<int64_t>(q + 1) * K) : _mm256_setzero_ps();
      _mm512_store_ps(dyp + static_cast<size_t>(a) * 16,
                       _mm512_permutex2var_ps(_mm512_castps256_ps512(d0), interleave, _mm512_castps256_ps512(d1)));
    }
    for (int r = 0; r < R; ++r) pbs[static_cast<size_t>(r)] = lines.line(n, p - s.pad + r);
    for (int i0 = 0; i0 < RSC; i0 += 8) {  // i = (r S + ss) C + c
      const int ni = RSC - i0 < 8 ? RSC - i0 : 8;
      __m512 v[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) v[j] = _mm512_load_ps(sums + static_cast<size_t>(i0 + j) * 16);
      const float* src[8];  // accumulator j's pair-buffer entries (zeros for rows outside the image, j >= ni)
      for (int j = 0; j < 8; ++j) {
        const int i = i0 + (j < ni ? j : 0);
        const float* line = pbs[static_cast<size_t>(row_of[i])];
        const float* pb = j < ni && line ? line : zeros.data();
        src[j] = pb + static_cast<int64_t>(q0) * 2 * C + offset_of[i];
      }
      for (int a = 0; a < pairs; ++a) {
        const __m512 d = _mm512_load_ps(dyp + static_cast<size_t>(a) * 16);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          double pair;
          __builtin_memcpy(&pair, src[j] + static_cast<int64_t>(a) * 4 * C, sizeof pair);
          v[j] = _mm512_fmadd_ps(_mm512_castpd_ps(_mm512_set1_pd(pair)), d, v[j]);
        }
      }
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) _mm512_store_ps(sums + static_cast<size_t>(i0 + j) * 16, v[j]);
    }
  });
  for (int i = 0; i < RSC; ++i) {  // the two pixel lanes of each output channel into acc
    const __m512 u = _mm512_permutexvar_ps(deinterleave, _mm512_load_ps(sums + static_cast<size_t>(i) * 16));
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1));
    float* out = acc + static_cast<int64_t>(i) * 8;
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm256_add_ps(_mm512_castps512_ps256(u), hi)));
  }
}
#pragma GCC diagnostic pop
#endif

// rows<8>, or at stride 1 in the AVX-512 build rows8_pairs.
void rows8(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0, int64_t row1) {
#if defined(__AVX512F__)
  if (s.stride == 1) return rows8_pairs(y, x, wt, s, row0, row1);
#endif
  rows<8>(y, x, wt, s, row0, row1);
}

#if defined(__AVX512F__)
// 16 < K <= 64 with few input channels (the stems at width >= 0.5: ImageNet 7x7/2 and CIFAR 3x3/1
// with C = 1..4), AVX-512 only: each output pixel's channels are V = ceil(K / 16) vectors (filter rows
// of 16 V floats, zero past K), groups of up to 24 / V pixels (8 at most: 24 accumulators at V = 4);
// every (tap, input channel) loads its V filter vectors once for the group and broadcasts one input
// value per pixel. (GCC's generic 64-float vectors spilled: 84 ms for the N16 7x7/2 stem this does in
// ~21 ms, one thread; im2col + GEMM 35.)
template <int V>
constexpr int wide_group() { return 24 / V < 8 ? 24 / V : 8; }

template <int V, int G>
__attribute__((noinline)) void wide_pixels(float* y, const float* const* lines, const float* wt, const ConvShape& s,
                                           int64_t np, int q) {
  __m512 acc[G][V];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[g][v] = _mm512_setzero_ps();
  const int SC = s.S * s.C;
  const int64_t step = static_cast<int64_t>(s.stride) * s.C;  // floats from one pixel's taps to the next's
  for (int r = 0; r < s.R; ++r) {
    if (!lines[r]) continue;
    const float* xb = lines[r] + q * step;  // pixel q's first tap in the padded line
    const float* wr = wt + static_cast<int64_t>(r) * SC * 16 * V;
    for (int j = 0; j < SC; ++j, wr += 16 * V) {  // j = tap column * C + input channel
      __m512 w[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_ps(wr + 16 * v);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        const __m512 xv = _mm512_set1_ps(xb[g * step + j]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[g][v] = _mm512_fmadd_ps(xv, w[v], acc[g][v]);
      }
    }
  }
  const int K = s.K;
  const __mmask16 last = static_cast<__mmask16>(K % 16 ? (1u << (K % 16)) - 1 : 0xFFFF);
  float* out = y + (np * s.Q() + q) * K;
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(out + g * K + v * 16, v == V - 1 ? last : static_cast<__mmask16>(0xFFFF), acc[g][v]);
}

template <int V>
void wide_rows_v(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0, int64_t row1) {
  pixel_groups<wide_group<V>()>(x, s, row0, row1, [&](auto g, const float* const* lines, int64_t np, int q) {
    wide_pixels<V, decltype(g)::value>(y, lines, wt, s, np, q);
  });
}

// The filter rows for K in (16, 64]: 16 ceil(K / 16) floats each.
void wide_rows(float* y, const float* x, const float* wt, const ConvShape& s, int64_t row0, int64_t row1) {
  switch ((s.K + 15) / 16) {
    case 2: return wide_rows_v<2>(y, x, wt, s, row0, row1);
    case 3: return wide_rows_v<3>(y, x, wt, s, row0, row1);
    default: return wide_rows_v<4>(y, x, wt, s, row0, row1);
  }
}

// out[j] (16 V floats each, j < NJ) += sum over `count` output pixels of xp[j] (advancing xstep floats
// per pixel) times the pixel's dy row (K floats at d, advancing K; the last vector masked to K).
// (Not inlined: its accumulators must stay in registers.)
template <int V, int NJ>
__attribute__((noinline)) void wide_weight_taps(float* out, const float* xp, int64_t xstep, const float* d, int K,
                                                int count) {
  __m512 a[NJ][V];
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) a[j][v] = _mm512_setzero_ps();
  const __mmask16 last = static_cast<__mmask16>(K % 16 ? (1u << (K % 16)) - 1 : 0xFFFF);
  for (int q = 0; q < count; ++q, xp += xstep, d += K) {
    __m512 dv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) dv[v] = _mm512_maskz_loadu_ps(v == V - 1 ? last : static_cast<__mmask16>(0xFFFF), d + 16 * v);
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) {
      const __m512 xv = _mm512_set1_ps(xp[j]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) a[j][v] = _mm512_fmadd_ps(xv, dv[v], a[j][v]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* o = out + j * 16 * V + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[j][v]));
    }
}

// The weight gradient's part from output rows [row0, row1) for 16 < K <= 64 (acc rows of 16 V floats,
// V = ceil(K / 16), zero past K): per output line segment and filter row, the S C taps of a pixel are
// contiguous in the padded input line, so they go in groups of up to 24 / V taps (8 at most) with
// their accumulators in registers over the segment's pixels.
template <int V>
void wide_weight_v(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  const int K = s.K, Q = s.Q(), SC = s.S * s.C;
  constexpr int kTaps = wide_group<V>();
  PaddedLines padded(x, s);
  line_segments(s, row0, row1, [&](int64_t np, int64_t n, int p, int q0, int q1) {
    const float* d = dy + (np * Q + q0) * K;
    const int64_t xstep = static_cast<int64_t>(s.stride) * s.C;
    for (int r = 0; r < s.R; ++r) {
      const float* line = padded.line(n, p * s.stride - s.pad + r);
      if (!line) continue;
      for (int j0 = 0; j0 < SC; j0 += kTaps) {
        float* out = acc + (static_cast<int64_t>(r) * SC + j0) * 16 * V;
        const float* xp = line + q0 * xstep + j0;
        with_group_size(std::min(kTaps, SC - j0), [&](auto nj) {
          constexpr int NJ = decltype(nj)::value < kTaps ? decltype(nj)::value : kTaps;
          wide_weight_taps<V, NJ>(out, xp, xstep, d, K, q1 - q0);
        });
      }
    }
  });
}

void wide_weight(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  switch ((s.K + 15) / 16) {
    case 2: return wide_weight_v<2>(acc, dy, x, s, row0, row1);
    case 3: return wide_weight_v<3>(acc, dy, x, s, row0, row1);
    default: return wide_weight_v<4>(acc, dy, x, s, row0, row1);
  }
}
#endif

// out[j] (KP floats each, j < NC) += sum over `count` output pixels of x[j] at the pixel's tap
// (xp, advancing xstep floats per pixel) times the pixel's dy row (d, advancing dstep floats).
// (Not inlined, like pixels: its accumulators must stay in registers.)
template <int KP, int NC>
__attribute__((noinline)) void weight_taps(float* out, const float* xp, int64_t xstep, const float* d, int64_t dstep,
                                           int count) {
  typename Vec<KP>::type a[NC];
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) a[j] = typename Vec<KP>::type{};
  for (int q = 0; q < count; ++q, xp += xstep, d += dstep) {
    const typename Vec<KP>::type dv = load<KP>(d);
#pragma GCC unroll 8
    for (int j = 0; j < NC; ++j) a[j] += xp[j] * dv;
  }
#pragma GCC unroll 8
  for (int j = 0; j < NC; ++j) {
    const typename Vec<KP>::type sum = load<KP>(out + j * KP) + a[j];
    __builtin_memcpy(out + j * KP, &sum, sizeof sum);
  }
}

// The weight gradient's part from output rows [row0, row1) (DirectWeightRows): per output line
// segment, for each tap and group of up to 8 input channels, the channels' accumulators over the
// segment's pixels in registers, reading the padded input lines (no bounds checks) and dy's rows in
// place (K == KP) or widened to KP with zeros.
template <int KP>
void weight(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  const int C = s.C, K = s.K, Q = s.Q();
  PaddedLines padded(x, s);
  std::vector<float> dwide(K == KP ? 0 : static_cast<size_t>(Q) * KP, 0.f);
  line_segments(s, row0, row1, [&](int64_t np, int64_t n, int p, int q0, int q1) {
    const int count = q1 - q0;
    const float* d = dy + (np * Q + q0) * K;
    if (K != KP) {
      for (int q = 0; q < count; ++q)
        for (int k = 0; k < K; ++k) dwide[static_cast<size_t>(q) * KP + k] = d[static_cast<int64_t>(q) * K + k];
      d = dwide.data();
    }
    for (int r = 0; r < s.R; ++r) {
      const float* line = padded.line(n, p * s.stride - s.pad + r);
      if (!line) continue;
      for (int ss = 0; ss < s.S; ++ss)
        for (int c0 = 0; c0 < C; c0 += 8) {
          float* out = acc + (static_cast<int64_t>(r * s.S + ss) * C + c0) * KP;
          const float* xp = line + static_cast<int64_t>(q0 * s.stride + ss) * C + c0;
          const int64_t xstep = static_cast<int64_t>(s.stride) * C;
          with_group_size(C - c0, [&](auto nc) { weight_taps<KP, decltype(nc)::value>(out, xp, xstep, d, KP, count); });
        }
    }
  });
}

// weight<8>, or at stride 1 in the AVX-512 build weight8_pairs.
void weight8(float* acc, const float* dy, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
#if defined(__AVX512F__)
  if (s.stride == 1) return weight8_pairs(acc, dy, x, s, row0, row1);
#endif
  weight<8>(acc, dy, x, s, row0, row1);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
}  // namespace dck
}  // namespace

// Defines the function NAME returning this translation unit's direct convolution rows.
#if defined(__AVX512F__)
#define MVEB_DIRECT_WIDE &dck::wide_rows, &dck::wide_weight
#else
#define MVEB_DIRECT_WIDE nullptr, nullptr
#endif
#define MVEB_DEFINE_DIRECT_CONV(NAME) \
  DirectConv NAME() { return {&dck::rows8, &dck::rows<16>, &dck::weight8, &dck::weight<16>, MVEB_DIRECT_WIDE}; }

}  // namespace mveb
