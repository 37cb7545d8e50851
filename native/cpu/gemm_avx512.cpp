// gemm_avx512.cpp: the AVX-512 SGEMM micro-kernel, 14 x 32 (28 zmm accumulators, two B vectors and a
// broadcast per row). Compiled with -mavx512f...; only called when CPUID reports AVX-512 F/BW/VL/DQ
// (CpuBackend::isa()). Tested by test/native/test_kernels.cpp ("kernels: gemm ...", Isa::Avx512).
#include <immintrin.h>

#include "cpu/gemm.h"

namespace mveb {
namespace gemm_detail {

namespace {
constexpr int MR = 14, NR = 32;

void micro_14x32(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C, long ldc,
                 float beta) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + 8 * NR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(Bp + 8 * NR + 16), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(Ap[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += NR;
  }
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
}  // namespace

KernelInfo kernel_avx512() { return KernelInfo{MR, NR, micro_14x32, 256, 126, 2048}; }

}  // namespace gemm_detail
}  // namespace mveb
