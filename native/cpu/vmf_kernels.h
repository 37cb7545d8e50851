// vmf_kernels.h: the few vector primitives of the vMF estimator (vmf.cpp): row axpy, row scale and a
// float dot product, in a portable version (vmf.cpp) and an AVX-512 version (vmf_avx512.cpp), picked
// once per call from CpuBackend::isa(). They carry the condition estimate (matrix-vector products and
// single-vector triangular solves with the factor; the bulk of the fp32 work goes through gemm) and
// the float64 fallback path's inner loops. Tested via test/native/test_vmf.cpp
// (every path runs there: MVEB_ISA=scalar forces the portable one).
#pragma once
#include <cstdint>

#include "cpu/cpu_features.h"

namespace mveb {
namespace vmf_detail {

struct Prims {
  void (*axpy)(float* y, float a, const float* x, int64_t n);  // y += a x
  void (*scale)(float* y, float a, int64_t n);                 // y *= a
  double (*dot)(const float* a, const float* b, int64_t n);     // sum a b, fp32 lanes summed in double
  void (*daxpy)(double* y, double a, const double* x, int64_t n);  // float64 path: y += a x
  double (*ddot)(const double* a, const double* b, int64_t n);     // float64 path: sum a b
};

Prims prims_portable();
Prims prims_avx512();
inline Prims prims_for(Isa isa) { return isa == Isa::Avx512 ? prims_avx512() : prims_portable(); }

}  // namespace vmf_detail
}  // namespace mveb
