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
// The same tile reading A unpacked from row-major memory (row i at A + i * lda): no packing pass
// over A. C = alpha * acc + beta * C.
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

KernelInfo kernel_avx2() { return KernelInfo{MR, NR, micro_6x16, 256, 120, 2048, micro_6x16_direct}; }

}  // namespace gemm_detail
}  // namespace mveb
