// op_checks.h: argument checks of the op table (core/backend.h), shared by every backend so that the
// CPU and CUDA backends refuse the same input with the same code and message. Each throws
// mveb::Error (E_SHAPE / E_ARG) naming the op, the expected and the found value.
#pragma once
#include "core/backend.h"
#include "core/error.h"

namespace mveb {

inline void check_nonnegative(const char* op, const char* what, long long v) {
  MVEB_CHECK(v >= 0, "E_SHAPE", op, ": ", what, " must be >= 0, found ", v);
}
inline void check_positive(const char* op, const char* what, long long v) {
  MVEB_CHECK(v > 0, "E_SHAPE", op, ": ", what, " must be > 0, found ", v);
}

// batchnorm_backward: with relu the forward's ReLU mask is required (core/backend.h).
inline void check_relu_mask(const char* op, bool relu, const void* relu_mask) {
  MVEB_CHECK(!relu || relu_mask != nullptr, "E_ARG", op, ": relu needs the forward's relu_mask, found null");
}

// gemm: sizes >= 0 and leading dimensions that cover a row of each (row-major) operand.
void check_gemm_args(bool transA, bool transB, int M, int N, int K, int lda, int ldb, int ldc);
// conv2d_*: positive sizes, non-negative padding, a non-empty output.
void check_conv_shape(const char* op, const ConvShape& s);
// maxpool2d_*: as conv, plus 2 pad <= kernel (no window is all padding) and int32-addressable input.
void check_pool_shape(const char* op, const PoolShape& s);

}  // namespace mveb
