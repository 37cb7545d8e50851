// gemm.h: internals of the CPU SGEMM (gemm.cpp): the packed-panel micro-kernel interface shared by
// the portable (gemm.cpp), AVX2 (gemm_avx2.cpp) and AVX-512 (gemm_avx512.cpp) micro-kernels.
// Packed A: panels of MR rows, element (i, k) at Ap[k * MR + i]; packed B: panels of NR columns,
// element (k, j) at Bp[k * NR + j]; both zero-padded to full panels, 64-byte aligned.
// Tested by test/native/test_kernels.cpp ("kernels: gemm ...") under every ISA.
#pragma once
#include <cstddef>

namespace mveb {
class ThreadPool;
namespace gemm_detail {

// C[MR x NR] (row stride ldc) = Ap*Bp (kc deep) + beta * C; beta == 0 never reads C.
using MicroKernel = void (*)(int kc, const float* Ap, const float* Bp, float* C, long ldc, float beta);

// The same tile with A read unpacked (row-major, row stride lda): C = alpha * A*Bp + beta * C.
using DirectMicroKernel = void (*)(int kc, const float* A, long lda, const float* Bp, float* C, long ldc, float alpha,
                                   float beta);

struct KernelInfo {
  int mr, nr;
  MicroKernel fn;
  int kc, mc, nc;  // cache blocking: depth, rows of A per block, columns of B per block
  DirectMicroKernel direct = nullptr;  // optional: used when op(A) = A (no packing of A)
};

KernelInfo kernel_scalar();
KernelInfo kernel_avx2();
KernelInfo kernel_avx512();

// The whole blocked, packed, multithreaded GEMM with the given micro-kernel. Row-major:
// C[M,N] = alpha op(A) op(B) + beta C.
void gemm_run(ThreadPool& pool, const KernelInfo& kernel, bool transA, bool transB, int M, int N, int K, float alpha,
              const float* A, long lda, const float* B, long ldb, float beta, float* C, long ldc);

}  // namespace gemm_detail
}  // namespace mveb
