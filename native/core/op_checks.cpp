// op_checks.cpp: see op_checks.h. Exercised by the kernel tests' bad-argument cases.
#include "core/op_checks.h"

#include <algorithm>

namespace mveb {

void check_gemm_args(bool transA, bool transB, int M, int N, int K, int lda, int ldb, int ldc) {
  check_nonnegative("gemm", "M", M);
  check_nonnegative("gemm", "N", N);
  check_nonnegative("gemm", "K", K);
  const int a_cols = transA ? M : K, b_cols = transB ? K : N;
  MVEB_CHECK(lda >= std::max(1, a_cols), "E_ARG", "gemm: lda must be >= ", std::max(1, a_cols), ", found ", lda);
  MVEB_CHECK(ldb >= std::max(1, b_cols), "E_ARG", "gemm: ldb must be >= ", std::max(1, b_cols), ", found ", ldb);
  MVEB_CHECK(ldc >= std::max(1, N), "E_ARG", "gemm: ldc must be >= ", std::max(1, N), ", found ", ldc);
}

void check_conv_shape(const char* op, const ConvShape& s) {
  check_nonnegative(op, "N", s.N);
  check_positive(op, "H", s.H);
  check_positive(op, "W", s.W);
  check_positive(op, "C", s.C);
  check_positive(op, "K", s.K);
  check_positive(op, "R", s.R);
  check_positive(op, "S", s.S);
  check_positive(op, "stride", s.stride);
  check_nonnegative(op, "pad", s.pad);
  // (the filter must fit the padded input: P() divides a negative numerator toward zero, so H = 2,
  // R = 3, stride 2, pad 0 gave P = 1 instead of no output)
  MVEB_CHECK(s.H + 2 * s.pad >= s.R && s.W + 2 * s.pad >= s.S, "E_SHAPE", op, ": the ", s.R, "x", s.S,
             " filter is larger than the padded input ", s.H + 2 * s.pad, "x", s.W + 2 * s.pad);
  MVEB_CHECK(s.P() > 0 && s.Q() > 0, "E_SHAPE", op, ": output size must be > 0, found ", s.P(), "x", s.Q(),
             " for input ", s.H, "x", s.W, " filter ", s.R, "x", s.S, " stride ", s.stride, " pad ", s.pad);
}

void check_pool_shape(const char* op, const PoolShape& s) {
  check_nonnegative(op, "N", s.N);
  check_positive(op, "H", s.H);
  check_positive(op, "W", s.W);
  check_nonnegative(op, "C", s.C);
  check_positive(op, "kernel", s.kernel);
  check_positive(op, "stride", s.stride);
  check_nonnegative(op, "pad", s.pad);
  MVEB_CHECK(2 * s.pad <= s.kernel, "E_SHAPE", op, ": pad must be <= kernel / 2 (", s.kernel / 2, "), found ", s.pad);
  MVEB_CHECK(s.H + 2 * s.pad >= s.kernel && s.W + 2 * s.pad >= s.kernel, "E_SHAPE", op, ": the ", s.kernel, "x",
             s.kernel, " window is larger than the padded input ", s.H + 2 * s.pad, "x", s.W + 2 * s.pad);
  MVEB_CHECK(s.P() > 0 && s.Q() > 0, "E_SHAPE", op, ": output size must be > 0, found ", s.P(), "x", s.Q(),
             " for input ", s.H, "x", s.W, " kernel ", s.kernel, " stride ", s.stride, " pad ", s.pad);
  MVEB_CHECK(static_cast<double>(s.N) * s.H * s.W * s.C < 2147483647.0, "E_SHAPE", op,
             ": input too large for int32 argmax (", static_cast<double>(s.N) * s.H * s.W * s.C, " elements)");
}

}  // namespace mveb
