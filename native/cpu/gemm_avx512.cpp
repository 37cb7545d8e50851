// gemm_avx512.cpp: the AVX-512 SGEMM micro-kernels, 14 x 32 (28 zmm accumulators, two B vectors and a
// broadcast per row), on packed A or reading row-major A in place. Compiled with -mavx512f...; only
// called when CPUID reports AVX-512 F/BW/VL/DQ (CpuBackend::isa()). Tested by
// test/native/test_kernels.cpp ("kernels: gemm ...", Isa::Avx512).
#include <immintrin.h>

#include "cpu/gemm.h"

namespace mveb {
namespace gemm_detail {

namespace {
constexpr int MR = 14, NR = 32;

void micro_14x32(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C, long ldc,
                 float beta) {
  // beta lives in memory during the loop: 28 accumulators + 2 B vectors + 1 broadcast use all 32
  // zmm registers, and a register held for beta makes the compiler spill a B vector instead.
  volatile float beta_in_memory = beta;
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  // Fetch the C tile now so its cache misses overlap the arithmetic instead of stalling the stores.
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + NR - 1), _MM_HINT_T0);
  }
  for (int k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(Ap[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += NR;
  }
  beta = beta_in_memory;
  if (beta == 0.f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, c0[i]);
      _mm512_storeu_ps(C + i * ldc + 16, c1[i]);
    }
  } else if (beta == 1.f) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_add_ps(c0[i], _mm512_loadu_ps(C + i * ldc)));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_add_ps(c1[i], _mm512_loadu_ps(C + i * ldc + 16)));
    }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc), c0[i]));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc + 16), c1[i]));
    }
  }
}
// The same tile reading A unpacked from row-major memory (row i at A + i * lda), for op(A) = A: no
// packing pass over A. Rows are addressed from five base pointers with lda-scaled offsets so the
// loop needs few registers. C = alpha * acc + beta * C.
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
}  // namespace

KernelInfo kernel_avx512() {
  return KernelInfo{MR, NR, micro_14x32, 640, 126, 2048, micro_14x32_direct};
}

}  // namespace gemm_detail
}  // namespace mveb
