// batchnorm_kernels.h: the row loops of batchnorm.cpp (per-channel sums over a block of rows, the
// affine apply with residual and ReLU, backward's sums and apply), written on GCC vectors of
// kLanes channels with scalar channel tails. Compiled once per ISA (batchnorm.cpp baseline,
// batchnorm_avx2.cpp, batchnorm_avx512.cpp: these passes run at the cache bandwidth of a core and
// baseline x86-64 has only 4-wide SSE); each copy has internal linkage (anonymous namespace) so the
// copies built with different flags never mix. batchnorm.cpp picks one by the backend's ISA. With
// stream, the AVX-512 copy writes y / dx with non-temporal stores (C a multiple of 16, 64-byte
// aligned output; otherwise ordinary stores).
// The ReLU mask (core/backend.h: one bit per element, rows of relu_mask_row_bytes(C) bytes) comes from
// one compare per vector (AVX-512 / AVX2 compare masks, lane by lane in the baseline copy) that also
// selects the ReLU's output; its bits gather in a 64-bit word per row, stored when full, and are read
// back kLanes at a time into a lane select.
// Tested by test/native/test_kernels.cpp ("kernels: batchnorm ...") under every ISA.
#pragma once
#include <cstdint>
#include <type_traits>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/backend.h"     // relu_mask_row_bytes
#include "cpu/kernel_util.h"  // can_stream_rows
#include "cpu/simd_lanes.h"   // kLanes, vf, ld, st

namespace mveb {

// One ISA's row loops; rows [m0, m1) of [M, C] arrays. The sums ADD into float accumulators of C.
struct BatchnormKernels {
  // s1[c] += x[m, c] - x0[c], s2[c] += (x[m, c] - x0[c])^2; with a non-null copy, x's rows [m0, m1)
  // also go to copy (same layout; non-temporal stores when can_stream_rows allows)
  void (*forward_sums)(const float* x, const float* x0, int64_t m0, int64_t m1, int C, float* s1, float* s2,
                       float* copy);
  // y = act(x * scale + shift (+ residual)), act = ReLU when relu; with relu and a mask, its rows
  // [m0, m1) receive the bits y > 0
  void (*apply)(float* y, uint8_t* mask, const float* x, const float* scale, const float* shift,
                const float* residual, bool relu, int64_t m0, int64_t m1, int C, bool stream);
  // g = dy, masked by the ReLU mask when it is not null; sg[c] += g, sgx[c] += g * (x - mean); g_out
  // (may be null) receives g
  void (*backward_sums)(const float* dy, const uint8_t* mask, const float* x, const float* mean, float* g_out,
                        int64_t m0, int64_t m1, int C, float* sg, float* sgx);
  // g = dy, masked by the ReLU mask when it is not null; dx = a g + b (x - mean) + c0. dx may alias dy.
  void (*backward_apply)(float* dx, const float* dy, const uint8_t* mask, const float* x, const float* mean,
                         const float* a, const float* b, const float* c0, int64_t m0, int64_t m1, int C, bool stream);
};
BatchnormKernels batchnorm_kernels_scalar();
BatchnormKernels batchnorm_kernels_avx2();
BatchnormKernels batchnorm_kernels_avx512();

namespace {
namespace bnk {
using simd::kLanes;
using simd::ld;
using simd::st;
using simd::vf;
inline void st_out(float* p, vf v, bool stream) {
#if defined(__AVX512F__)
  if (stream) {
    _mm512_stream_ps(p, v);
    return;
  }
#endif
  st(p, v);
}
inline void end_stream(bool stream) {
#if defined(__AVX512F__)
  if (stream) _mm_sfence();  // the streamed lines are visible before the pool's region ends
#else
  (void)stream;
#endif
}
inline vf relu(vf v) { return v > 0.f ? v : vf{}; }
inline float relu(float v) { return v > 0.f ? v : 0.f; }

// ReLU mask bits: lane j of the vector at channel c (a multiple of kLanes) is bit (c + j) % 8 of byte
// (c + j) / 8 of the row.
inline unsigned positive_bits(vf v) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
#elif defined(__AVX2__)
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ)));
#else
  unsigned bits = 0;
  for (int j = 0; j < kLanes; ++j) bits |= (v[j] > 0.f ? 1u : 0u) << j;
  return bits;
#endif
}
inline unsigned load_bits(const uint8_t* row, int c) {
  if (kLanes == 4) return (row[c >> 3] >> (c & 7)) & 0xFu;
  if (kLanes == 8) return row[c >> 3];
  uint16_t w;
  __builtin_memcpy(&w, row + (c >> 3), sizeof w);
  return w;
}
// d where the lane's bit is set, else 0.
inline vf select_bits(vf d, unsigned bits) {
#if defined(__AVX512F__)
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(bits), d);
#else
  using simd::vi;
  vi lane_bit;
  for (int j = 0; j < kLanes; ++j) lane_bit[j] = 1 << j;
  const vi keep = ((vi{} + static_cast<int32_t>(bits)) & lane_bit) != 0;
  vi di;
  __builtin_memcpy(&di, &d, sizeof d);
  di &= keep;
  __builtin_memcpy(&d, &di, sizeof d);
  return d;
#endif
}
// fn(std::integral_constant<int, n>) for the scalar channel tail's width n (1 .. kLanes - 1): with n a
// compile-time constant the tail's per-channel sums stay in registers (C = 8 on AVX-512, where the
// whole row is the tail: backward sums 10 -> ~5 ms for 401408 rows).
template <typename Fn>
inline void with_tail_width(int n, const Fn& fn) {
#if defined(__AVX512F__)
  with_constant<1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15>(n, fn);
#elif defined(__AVX2__)
  with_constant<1, 2, 3, 4, 5, 6, 7>(n, fn);
#else
  with_constant<1, 2, 3>(n, fn);
#endif
}

// g where bit is 1, else +0: on the float's bits, so no branch (ReLU masks are close to random: a
// branch here mispredicted half the time, the C = 8 backward took 60 % longer).
inline float keep_if(float g, unsigned bit) {
  uint32_t u;
  __builtin_memcpy(&u, &g, sizeof u);
  u &= 0u - (bit & 1u);
  __builtin_memcpy(&g, &u, sizeof u);
  return g;
}

// Bits [c0, c0 + n) of a mask row (n < kLanes <= 16, the scalar channel tail), as bits [0, n).
inline unsigned tail_bits(const uint8_t* row, int c0, int n) {
  const uint8_t* p = row + (c0 >> 3);
  const int end = (c0 & 7) + n;  // bits of the bytes read (never past the row's last byte)
  unsigned w = p[0];
  if (end > 8) w |= static_cast<unsigned>(p[1]) << 8;
  if (end > 16) w |= static_cast<unsigned>(p[2]) << 16;
  return (w >> (c0 & 7)) & ((1u << n) - 1);
}

// The sums run over chunks of up to kChunk vectors of channels down the rows of the block (the
// accumulators stay in registers; each row's chunk is kChunk whole cache lines, so the row stride
// of large C does not defeat the prefetchers); fn(c, m, acc) adds row m's vectors at channel c
// into acc[0], acc[1].
constexpr int kChunk = 8;
template <int NB, typename Fn>
inline void sums_chunk(int c0, int64_t m0, int64_t m1, float* s1, float* s2, const Fn& fn) {
  vf a[NB][2];
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) a[j][0] = ld(s1 + c0 + j * kLanes), a[j][1] = ld(s2 + c0 + j * kLanes);
  for (int64_t m = m0; m < m1; ++m) {
    #pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) fn(c0 + j * kLanes, m, a[j]);
  }
  #pragma GCC unroll 8
  for (int j = 0; j < NB; ++j) st(s1 + c0 + j * kLanes, a[j][0]), st(s2 + c0 + j * kLanes, a[j][1]);
}
template <typename Fn>
inline void sums_vectors(int cv, int64_t m0, int64_t m1, float* s1, float* s2, const Fn& fn) {
  int c = 0;
  for (; c + kChunk * kLanes <= cv; c += kChunk * kLanes) sums_chunk<kChunk>(c, m0, m1, s1, s2, fn);
  switch ((cv - c) / kLanes) {  // the rest as one chunk
    case 0: break;
    case 1: sums_chunk<1>(c, m0, m1, s1, s2, fn); break;
    case 2: sums_chunk<2>(c, m0, m1, s1, s2, fn); break;
    case 3: sums_chunk<3>(c, m0, m1, s1, s2, fn); break;
    case 4: sums_chunk<4>(c, m0, m1, s1, s2, fn); break;
    case 5: sums_chunk<5>(c, m0, m1, s1, s2, fn); break;
    case 6: sums_chunk<6>(c, m0, m1, s1, s2, fn); break;
    default: sums_chunk<7>(c, m0, m1, s1, s2, fn); break;
  }
}

void forward_sums(const float* x, const float* x0, int64_t m0, int64_t m1, int C, float* s1, float* s2, float* copy) {
  const int cv = C / kLanes * kLanes;
  const bool stream = copy && can_stream_rows(true, copy, C);
  auto vectors = [&](auto with_copy) {  // one body with and without the copy (chosen at compile time)
    sums_vectors(cv, m0, m1, s1, s2, [&](int c, int64_t m, vf* a) {
      const vf v = ld(x + m * C + c);
      if constexpr (decltype(with_copy)::value) st_out(copy + m * C + c, v, stream);
      const vf d = v - ld(x0 + c);
      a[0] += d;
      a[1] += d * d;
    });
  };
  if (copy)
    vectors(std::true_type{});
  else
    vectors(std::false_type{});
  with_tail_width(C - cv, [&](auto width) {  // the channel tail row by row (C < kLanes: all of it)
    constexpr int N = decltype(width)::value;
    float t1[N] = {}, t2[N] = {};
    for (int64_t m = m0; m < m1; ++m)
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) {
        if (copy) copy[m * C + cv + j] = x[m * C + cv + j];
        const float d = x[m * C + cv + j] - x0[cv + j];
        t1[j] += d;
        t2[j] += d * d;
      }
    for (int j = 0; j < N; ++j) s1[cv + j] += t1[j], s2[cv + j] += t2[j];
  });
  end_stream(stream);
}

// One vector of apply's output from v (affine, residual added): the ReLU, with kMask through its
// bits, which are appended to the 64-bit word (nbits of it used), stored at out when full.
template <bool kMask>
inline vf relu_out(vf v, bool relu_, uint64_t& word, int& nbits, uint8_t*& out) {
  if (!kMask) return relu_ ? relu(v) : v;
  const unsigned bits = positive_bits(v);
  word |= static_cast<uint64_t>(bits) << nbits;
  nbits += kLanes;
  if (nbits == 64) {
    __builtin_memcpy(out, &word, sizeof word);
    out += sizeof word;
    word = 0;
    nbits = 0;
  }
  return select_bits(v, bits);
}

// One row of apply; kMask: relu with the mask (the mask bits also select the ReLU's output).
template <bool kMask>
inline void apply_row(float* yr, uint8_t* mr, const float* xr, const float* scale, const float* shift,
                      const float* rr, bool relu_, int cv, int C, bool stream) {
  uint64_t word = 0;  // the mask bits gather in a 64-bit word, stored when full
  int nbits = 0;
  uint8_t* out = mr;
  for (int c = 0; c < cv; c += kLanes) {
    vf v = ld(xr + c) * ld(scale + c) + ld(shift + c);
    if (rr) v += ld(rr + c);
    st_out(yr + c, relu_out<kMask>(v, relu_, word, nbits, out), stream);
  }
  uint64_t tbits = 0;  // the scalar tail's mask bits (C - cv < kLanes <= 16 of them)
  for (int c = cv; c < C; ++c) {
    float v = xr[c] * scale[c] + shift[c];
    if (rr) v += rr[c];
    if (kMask) tbits |= static_cast<uint64_t>(v > 0.f) << (c - cv);
    yr[c] = relu_ ? relu(v) : v;
  }
  if (kMask) {  // append the tail's bits and store the row's last bytes (little-endian: low bits first)
    const int tn = C - cv;
    word |= tbits << nbits;  // (nbits < 64)
    if (nbits + tn >= 64) {
      __builtin_memcpy(out, &word, sizeof word);
      out += sizeof word;
      word = tbits >> (64 - nbits);  // (nbits >= 64 - tn > 0 here)
      nbits -= 64;
    }
    nbits += tn;
    __builtin_memcpy(out, &word, static_cast<size_t>(nbits + 7) / 8);
  }
}

// apply for C a multiple of kLanes up to kFlatMaxChannels, rows [0, rows) as one stream of vectors
// with the C / kLanes scale and shift vectors in registers; with the mask (C also a multiple of 8) the
// rows' bits are one contiguous bit string, gathered across rows into 64-bit words. (apply_row's
// per-row overhead dominated 16-channel rows, e.g. the folded 8-channel batch norms of the default
// pretrain encoder: one thread, 12544 x 16 forward with statistics 0.091 -> 0.070 ms.)
constexpr int kFlatMaxChannels = 64;
template <bool kMask>
void apply_flat(float* y, uint8_t* mask, const float* x, const float* scale, const float* shift, const float* residual,
                bool relu_, int64_t rows, int C, bool stream) {
  const int nv = C / kLanes;
  vf sc[kFlatMaxChannels / kLanes], sh[kFlatMaxChannels / kLanes];
  for (int j = 0; j < nv; ++j) sc[j] = ld(scale + j * kLanes), sh[j] = ld(shift + j * kLanes);
  uint64_t word = 0;
  int nbits = 0;
  const int64_t n = rows * C;
  for (int64_t i = 0; i < n; i += C)
    for (int j = 0; j < nv; ++j) {
      const int64_t e = i + j * kLanes;
      vf v = ld(x + e) * sc[j] + sh[j];
      if (residual) v += ld(residual + e);
      st_out(y + e, relu_out<kMask>(v, relu_, word, nbits, mask), stream);
    }
  if (kMask) __builtin_memcpy(mask, &word, static_cast<size_t>(nbits) / 8);  // (C, so nbits, a multiple of 8)
}

void apply(float* y, uint8_t* mask, const float* x, const float* scale, const float* shift, const float* residual,
           bool relu_, int64_t m0, int64_t m1, int C, bool stream) {
  const int cv = C / kLanes * kLanes;
  const size_t mask_row = relu_mask_row_bytes(C);
  stream = can_stream_rows(stream, y, C);
  if (cv == C && C <= kFlatMaxChannels && !(relu_ && mask && C % 8)) {  // (with the mask: rows of whole bytes)
    const float* r0 = residual ? residual + m0 * C : nullptr;
    if (relu_ && mask)
      apply_flat<true>(y + m0 * C, mask + m0 * mask_row, x + m0 * C, scale, shift, r0, true, m1 - m0, C, stream);
    else
      apply_flat<false>(y + m0 * C, nullptr, x + m0 * C, scale, shift, r0, relu_, m1 - m0, C, stream);
    end_stream(stream);
    return;
  }
  for (int64_t m = m0; m < m1; ++m) {
    const float* rr = residual ? residual + m * C : nullptr;
    if (relu_ && mask)
      apply_row<true>(y + m * C, mask + m * mask_row, x + m * C, scale, shift, rr, true, cv, C, stream);
    else
      apply_row<false>(y + m * C, nullptr, x + m * C, scale, shift, rr, relu_, cv, C, stream);
  }
  end_stream(stream);
}

void backward_sums(const float* dy, const uint8_t* mask, const float* x, const float* mean, float* g_out, int64_t m0,
                   int64_t m1, int C, float* sg, float* sgx) {
  const int cv = C / kLanes * kLanes;
  const size_t mask_row = relu_mask_row_bytes(C);
  sums_vectors(cv, m0, m1, sg, sgx, [&](int c, int64_t m, vf* a) {
    vf g = ld(dy + m * C + c);
    if (mask) g = select_bits(g, load_bits(mask + m * mask_row, c));
    if (g_out) st(g_out + m * C + c, g);
    a[0] += g;
    a[1] += g * (ld(x + m * C + c) - ld(mean + c));
  });
  with_tail_width(C - cv, [&](auto width) {  // the channel tail row by row (C < kLanes: all of it)
    constexpr int N = decltype(width)::value;
    float tg[N] = {}, tgx[N] = {};
    for (int64_t m = m0; m < m1; ++m) {
      const unsigned bits = mask ? tail_bits(mask + m * mask_row, cv, N) : ~0u;
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) {
        const float g = keep_if(dy[m * C + cv + j], bits >> j);
        if (g_out) g_out[m * C + cv + j] = g;
        tg[j] += g;
        tgx[j] += g * (x[m * C + cv + j] - mean[cv + j]);
      }
    }
    for (int j = 0; j < N; ++j) sg[cv + j] += tg[j], sgx[cv + j] += tgx[j];
  });
}

void backward_apply(float* dx, const float* dy, const uint8_t* mask, const float* x, const float* mean, const float* a,
                    const float* b, const float* c0, int64_t m0, int64_t m1, int C, bool stream) {
  const int cv = C / kLanes * kLanes;
  const size_t mask_row = relu_mask_row_bytes(C);
  stream = can_stream_rows(stream, dx, C);
  for (int64_t m = m0; m < m1; ++m) {
    const float* dyr = dy + m * C;
    const uint8_t* mr = mask ? mask + m * mask_row : nullptr;
    const float* xr = x + m * C;
    float* dxr = dx + m * C;
    for (int c = 0; c < cv; c += kLanes) {
      vf g = ld(dyr + c);
      if (mr) g = select_bits(g, load_bits(mr, c));
      st_out(dxr + c, ld(a + c) * g + ld(b + c) * (ld(xr + c) - ld(mean + c)) + ld(c0 + c), stream);
    }
    const unsigned bits = mr && cv < C ? tail_bits(mr, cv, C - cv) : ~0u;
    for (int c = cv; c < C; ++c) {
      const float g = keep_if(dyr[c], bits >> (c - cv));
      dxr[c] = a[c] * g + b[c] * (xr[c] - mean[c]) + c0[c];
    }
  }
  end_stream(stream);
}
}  // namespace bnk
}  // namespace

// Defines the function NAME returning this translation unit's row loops.
#define MVEB_DEFINE_BATCHNORM_KERNELS(NAME)                                                              \
  BatchnormKernels NAME() {                                                                             \
    return {&bnk::forward_sums, &bnk::apply, &bnk::backward_sums, &bnk::backward_apply};                 \
  }

}  // namespace mveb
