// transpose_avx512.h: the AVX-512 16 x 16 transpose of 32-bit lanes, shared by the AVX-512 SGEMM's
// B^T packing (gemm_avx512.cpp) and the AMX SGEMM's packing (gemm_amx.cpp). Include only from files
// compiled with AVX-512 flags. Tested through the GEMM tests of those paths (test_kernels.cpp).
#pragma once
#include <immintrin.h>

namespace mveb {
namespace {
// out[j] = column j of the 16 x 16 block r (r[i] = row i): unpack pairs of rows, shuffle 4 x 4 blocks
// within the 128-bit lanes, then gather the lanes.
// (GCC 12 reports the intrinsics' internal undefined operand '__Y' of the unpack / shuffle builtins
// as (maybe-)uninitialised here: a false positive of its headers, silenced for this function only.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
inline void transpose16(const __m512 r[16], __m512 out[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // per lane: a0 b0 a1 b1
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // a2 b2 a3 b3
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // u[4i + c], lane L: rows 4i..4i+3 of column 4L + c
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    out[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    out[8 + c] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    out[4 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    out[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}
#pragma GCC diagnostic pop

inline void transpose16(const __m512i r[16], __m512i out[16]) {
  __m512 rf[16], of[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) rf[i] = _mm512_castsi512_ps(r[i]);
  transpose16(rf, of);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) out[i] = _mm512_castps_si512(of[i]);
}
}  // namespace
}  // namespace mveb
