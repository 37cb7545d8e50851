// gemm_avx2.cpp: the AVX2/FMA SGEMM micro-kernels, 6 x 16 (12 ymm accumulators), on packed A or
// reading row-major A in place. Compiled with
// -mavx2 -mfma; only called when CPUID reports AVX2+FMA (CpuBackend::isa()). Tested by
// test/native/test_kernels.cpp ("kernels: gemm ...", run under Isa::Avx2).
#include <immintrin.h>

#include "cpu/gemm.h"

namespace mveb {
namespace gemm_detail {

namespace {
constexpr int MR = 6, NR = 16;

void micro_6x16(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C, long ldc,
                float beta) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  // Fetch the C tile now so its cache misses overlap the arithmetic instead of stalling the stores.
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  for (int k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(Bp), b1 = _mm256_load_ps(Bp + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(Ap + i);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += NR;
  }
  if (beta == 0.f) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(C + i * ldc, c0[i]);
      _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
    }
  } else if (beta == 1.f) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(C + i * ldc, _mm256_add_ps(c0[i], _mm256_loadu_ps(C + i * ldc)));
      _mm256_storeu_ps(C + i * ldc + 8, _mm256_add_ps(c1[i], _mm256_loadu_ps(C + i * ldc + 8)));
    }
  } else {
    const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(C + i * ldc, _mm256_fmadd_ps(vb, _mm256_loadu_ps(C + i * ldc), c0[i]));
      _mm256_storeu_ps(C + i * ldc + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(C + i * ldc + 8), c1[i]));
    }
  }
}
// Depth steps ahead at which the A-prefetching direct kernel fetches A's rows (4 cache lines).
constexpr int kPrefetchA = 64;

// The same tile reading A unpacked from row-major memory (row i at A + i * lda): no packing pass
// over A. C = alpha * acc + beta * C. kPrefetch: also prefetch A ahead of use, one row's line per
// depth step (past the tile's depth the next tile's), for the first column panel of a row block,
// which reads A from memory (as gemm_avx512.cpp's; 3136 x 64 x 256 with A from DRAM, one thread:
// 81 -> 96 GFLOP/s under MVEB_ISA=avx2).
template <bool kPrefetch>
void micro_6x16_direct(int kc, const float* __restrict A, long lda, const float* __restrict Bp, float* __restrict C,
                       long ldc, float alpha, float beta) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  // Fetch the C tile now so its cache misses overlap the arithmetic instead of stalling the stores.
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  const float* a0 = A;
  const float* a3 = A + 3 * lda;
  for (int k = 0; k < kc; ++k) {
    if (kPrefetch) {
      const int row = (k & 15) < MR ? (k & 15) : MR - 1;
      const long next_tile = k + kPrefetchA < kc ? 0 : MR * lda - kc;
      _mm_prefetch(reinterpret_cast<const char*>(a0 + row * lda + kPrefetchA + next_tile), _MM_HINT_T0);
    }
    const __m256 b0 = _mm256_load_ps(Bp), b1 = _mm256_load_ps(Bp + 8);
    const float* rows[MR] = {a0, a0 + lda, a0 + 2 * lda, a3, a3 + lda, a3 + 2 * lda};
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(rows[i]);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
    ++a0;
    ++a3;
    Bp += NR;
  }
  const __m256 va = _mm256_set1_ps(alpha);
  if (beta == 0.f) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(C + i * ldc, _mm256_mul_ps(va, c0[i]));
      _mm256_storeu_ps(C + i * ldc + 8, _mm256_mul_ps(va, c1[i]));
    }
  } else {
    const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      _mm256_storeu_ps(C + i * ldc, _mm256_fmadd_ps(vb, _mm256_loadu_ps(C + i * ldc), _mm256_mul_ps(va, c0[i])));
      _mm256_storeu_ps(C + i * ldc + 8,
                       _mm256_fmadd_ps(vb, _mm256_loadu_ps(C + i * ldc + 8), _mm256_mul_ps(va, c1[i])));
    }
  }
}
}  // namespace

KernelInfo kernel_avx2() {
  KernelInfo k{MR, NR, micro_6x16, 256, 120, 2048, micro_6x16_direct<false>};
  k.direct_prefetch = micro_6x16_direct<true>;
  return k;
}

}  // namespace gemm_detail
}  // namespace mveb
