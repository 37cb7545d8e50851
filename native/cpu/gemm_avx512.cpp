// gemm_avx512.cpp: the AVX-512 SGEMM micro-kernels, 14 x 32 (28 zmm accumulators, two B vectors and a
// broadcast per row), on packed A or reading row-major A in place; the packed-A kernel also for 1-13
// row tiles and for B read in place (rows ldb apart); vector packing of op(A) = A and of B^T.
// Compiled with -mavx512f...; only called when CPUID reports AVX-512 F/BW/VL/DQ (CpuBackend::isa()). Tested by
// test/native/test_kernels.cpp ("kernels: gemm ...", Isa::Avx512).
#include <immintrin.h>

#include "cpu/gemm.h"
#include "cpu/transpose_avx512.h"

namespace mveb {
namespace gemm_detail {

namespace {
constexpr int MR = 14, NR = 32;

// Depth steps ahead at which the loop prefetches the B rows it will read, into L1 (B streams from L2:
// a 1024-deep panel is 128 KiB, more than L1) and, further ahead, into L2 (the first row panel reads
// each B panel from L3). The hardware prefetchers alone left ~4 % of the FMA rate at 2048^3 and the
// L2 prefetch ~2-4 % more at 1024^3-4096^3 (one thread; L1 distances 4-12 measured alike, L2 64 >
// 32, 128).
constexpr int kPrefetchB = 8, kPrefetchBL2 = 64;

// C[R x NR] (row stride ldc) = Ap*B (kc deep) + beta * C for the first R <= MR rows of a packed A
// panel (MR floats per depth step); B rows are ldb floats apart (NR for a packed panel, the row stride
// of an unpacked op(B) = B otherwise). kCopyB: also store the B rows read, packed (NR apart), at Bcopy.
// beta == 0 never reads C.
template <int R, bool kCopyB>
void micro_rows(int kc, const float* __restrict Ap, const float* __restrict Bp, long ldb, float* __restrict Bcopy,
                float* __restrict C, long ldc, float beta) {
  // beta lives in memory during the loop: 28 accumulators + 2 B vectors + 1 broadcast use all 32
  // zmm registers, and a register held for beta makes the compiler spill a B vector instead.
  volatile float beta_in_memory = beta;
  __m512 c0[R], c1[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  // Fetch the C tile now so its cache misses overlap the arithmetic instead of stalling the stores.
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  // Prefetches past the panel's end are harmless (they never fault).
  const long ahead = kPrefetchB * ldb, far_ahead = kPrefetchBL2 * ldb;
  for (int k = 0; k < kc; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(Bp + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + ahead + 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + far_ahead), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + far_ahead + 16), _MM_HINT_T1);
    const __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);
    if (kCopyB) {
      _mm512_store_ps(Bcopy, b0);
      _mm512_store_ps(Bcopy + 16, b1);
      Bcopy += NR;
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const __m512 a = _mm512_set1_ps(Ap[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += ldb;
  }
  beta = beta_in_memory;
  if (beta == 0.f) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      _mm512_storeu_ps(C + i * ldc, c0[i]);
      _mm512_storeu_ps(C + i * ldc + 16, c1[i]);
    }
  } else if (beta == 1.f) {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_add_ps(c0[i], _mm512_loadu_ps(C + i * ldc)));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_add_ps(c1[i], _mm512_loadu_ps(C + i * ldc + 16)));
    }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc), c0[i]));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc + 16), c1[i]));
    }
  }
}

void micro_14x32(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C, long ldc,
                 float beta) {
  micro_rows<MR, false>(kc, Ap, Bp, NR, nullptr, C, ldc, beta);
}

template <bool kCopyB>
void micro_rows_dispatch(int rows, int kc, const float* Ap, const float* B, long ldb, float* Bcopy, float* C, long ldc,
                         float beta) {
  switch (rows) {
    case 1: return micro_rows<1, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 2: return micro_rows<2, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 3: return micro_rows<3, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 4: return micro_rows<4, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 5: return micro_rows<5, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 6: return micro_rows<6, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 7: return micro_rows<7, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 8: return micro_rows<8, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 9: return micro_rows<9, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 10: return micro_rows<10, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 11: return micro_rows<11, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 12: return micro_rows<12, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    case 13: return micro_rows<13, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
    default: return micro_rows<MR, kCopyB>(kc, Ap, B, ldb, Bcopy, C, ldc, beta);
  }
}

void micro_rows_any(int rows, int kc, const float* Ap, const float* B, long ldb, float* Bcopy, float* C, long ldc,
                    float beta) {
  if (Bcopy) micro_rows_dispatch<true>(rows, kc, Ap, B, ldb, Bcopy, C, ldc, beta);
  else micro_rows_dispatch<false>(rows, kc, Ap, B, ldb, nullptr, C, ldc, beta);
}

// Depth steps ahead at which the A-prefetching direct kernel fetches A's rows (4 cache lines): one
// row's next line per step, the rows in turn, and past the tile's depth the next tile's first lines.
constexpr int kPrefetchA = 64;

// The same tile reading A unpacked from row-major memory (row i at A + i * lda), for op(A) = A: no
// packing pass over A. Rows are addressed from five base pointers with lda-scaled offsets so the
// loop needs few registers. C = alpha * acc + beta * C.
// kPrefetch: also prefetch A into L1 ahead of use, for the first column panel of a row block, which
// reads A from memory: the 14 rows are 14 streams lda apart that the hardware prefetchers do not
// follow, so the loop stalled on each new line (N16 56x56 C256 -> K64 forward, A from DRAM, one
// thread: 105 -> 140 GFLOP/s). The later panels find A in L2 and run the plain loop (the prefetch's
// extra instructions cost ~9 % at 1024^3 in cache).
template <bool kPrefetch>
void micro_14x32_direct(int kc, const float* __restrict A, long lda, const float* __restrict Bp, float* __restrict C,
                        long ldc, float alpha, float beta) {
  volatile float alpha_in_memory = alpha, beta_in_memory = beta;  // see micro_14x32
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  const float* a0 = A;
  const float* a3 = A + 3 * lda;
  const float* a6 = A + 6 * lda;
  const float* a9 = A + 9 * lda;
  const float* a12 = A + 12 * lda;
  for (int k = 0; k < kc; ++k) {
    if (kPrefetch) {  // row k % 16 (the last row for 14, 15), kPrefetchA steps ahead or in the next tile
      const int row = (k & 15) < MR ? (k & 15) : MR - 1;
      const long next_tile = k + kPrefetchA < kc ? 0 : MR * lda - kc;
      _mm_prefetch(reinterpret_cast<const char*>(a0 + row * lda + kPrefetchA + next_tile), _MM_HINT_T0);
    }
    _mm_prefetch(reinterpret_cast<const char*>(Bp + kPrefetchB * NR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + kPrefetchB * NR + 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + kPrefetchBL2 * NR), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + kPrefetchBL2 * NR + 16), _MM_HINT_T1);
    const __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
    const float* rows[MR] = {a0,      a0 + lda, a0 + 2 * lda, a3,      a3 + lda, a3 + 2 * lda, a6,
                             a6 + lda, a6 + 2 * lda, a9,     a9 + lda, a9 + 2 * lda, a12,     a12 + lda};
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(*rows[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    ++a0;
    ++a3;
    ++a6;
    ++a9;
    ++a12;
    Bp += NR;
  }
  alpha = alpha_in_memory;
  beta = beta_in_memory;
  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_mul_ps(va, c0[i]));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_mul_ps(va, c1[i]));
    }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc), _mm512_mul_ps(va, c0[i])));
      _mm512_storeu_ps(C + i * ldc + 16,
                       _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc + 16), _mm512_mul_ps(va, c1[i])));
    }
  }
}

// A 32-wide panel of op(B) = B^T in 16 x 16 transposed blocks (the portable loop gathers one float
// at a time: ~5 % of a one-thread 1024^3 (1,1) product).
void pack_bt_32(const float* B, long ldb, int k0, int kc, int j0, float* dst) {
  for (int kk = 0; kk < kc; kk += 16) {
    const int n = kc - kk < 16 ? kc - kk : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    for (int h = 0; h < 2; ++h) {
      const float* src = B + static_cast<long>(j0 + 16 * h) * ldb + k0 + kk;
      __m512 r[16], out[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) r[i] = _mm512_maskz_loadu_ps(mask, src + i * ldb);
      transpose16(r, out);
      float* d = dst + static_cast<long>(kk) * NR + 16 * h;
      for (int k = 0; k < n; ++k) _mm512_storeu_ps(d + k * NR, out[k]);
    }
  }
}

// Packs alpha * A[i0:i0+rows, k0:k0+kc] (op(A) = A, rows <= MR) into one MR-tall panel [k][MR],
// zero-padded: 16 depths at a time, the rows loaded as vectors and transposed in registers (the
// portable loop writes one float at a time, 56 bytes apart: ~6 % of a 4096^3 product's time).
void pack_a_14(const float* A, long lda, int i0, int rows, int k0, int kc, float alpha, float* dst) {
  const __m512 va = _mm512_set1_ps(alpha);
  const __mmask16 row_mask = static_cast<__mmask16>((1u << MR) - 1);
  const float* src = A + static_cast<long>(i0) * lda + k0;
  for (int kk = 0; kk < kc; kk += 16) {
    const int n = kc - kk < 16 ? kc - kk : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
    __m512 r[16], out[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mask, src + i * lda + kk)) : _mm512_setzero_ps();
    transpose16(r, out);
    float* d = dst + static_cast<long>(kk) * MR;
    for (int k = 0; k < n; ++k) _mm512_mask_storeu_ps(d + k * MR, row_mask, out[k]);
  }
}
}  // namespace

KernelInfo kernel_avx512() {
  // KC 1024 rather than 640: half the passes over C at K = 2048 (C streams from L3 in each pass);
  // measured +3-6 % at 2048^3 and 4096^3 with one thread, the ResNet shapes unchanged.
  KernelInfo k{MR, NR, micro_14x32, 1024, 126, 2048, micro_14x32_direct<false>, micro_rows_any, pack_bt_32, pack_a_14};
  k.direct_prefetch = micro_14x32_direct<true>;
  k.rows_outer = true;
  return k;
}

}  // namespace gemm_detail
}  // namespace mveb
