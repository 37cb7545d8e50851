// reference.h: the naive float64 reference of every CPU kernel (plain loops straight from the
// definitions in native/core/backend.h). Frozen, tests only: the fast kernels are compared to it
// (test_kernels.cpp) and its backward passes are checked against finite differences there.
#pragma once
#include <cstdint>
#include <vector>

#include "core/backend.h"

namespace ref {

using Vec = std::vector<double>;

// C = alpha op(A) op(B) + beta C (beta == 0 assigns).
void gemm(bool transA, bool transB, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
          int ldb, double beta, double* C, int ldc);

void nchw_to_nhwc(double* dst, const double* src, int N, int C, int H, int W);

// NHWC x, KRSC w, [N,P,Q,K] y. All three assign.
void conv2d_forward(double* y, const double* x, const double* w, const mveb::ConvShape& s);
void conv2d_backward_data(double* dx, const double* dy, const double* w, const mveb::ConvShape& s);
void conv2d_backward_weight(double* dw, const double* dy, const double* x, const mveb::ConvShape& s);

// Batch norm over rows [M, C]; residual may be null. Train writes mean/invstd (biased variance) and
// updates running_mean/var (unbiased variance, momentum). Backward assigns every output.
void batchnorm_forward_train(double* y, double* mean, double* invstd, double* running_mean, double* running_var,
                             const double* x, const double* gamma, const double* beta, const double* residual,
                             bool relu, int M, int C, double momentum, double eps);
void batchnorm_forward_eval(double* y, const double* x, const double* gamma, const double* beta,
                            const double* running_mean, const double* running_var, const double* residual, bool relu,
                            int M, int C, double eps);
void batchnorm_backward(double* dx, double* dresidual, double* dgamma, double* dbeta, const double* dy,
                        const double* y, const double* x, const double* gamma, const double* mean,
                        const double* invstd, bool relu, bool train, int M, int C);

void relu_forward(double* y, const double* x, size_t n);
void relu_backward(double* dx, const double* dy, const double* y, size_t n);

// argmax: flat index into x, the first maximum in window order (rows, then columns).
void maxpool2d_forward(double* y, int32_t* argmax, const double* x, const mveb::PoolShape& s);
void maxpool2d_backward(double* dx, const double* dy, const int32_t* argmax, const mveb::PoolShape& s);
void global_avgpool_forward(double* y, const double* x, int N, int HW, int C);
void global_avgpool_backward(double* dx, const double* dy, int N, int HW, int C);

void sgd_step(double* param, double* buf, const double* grad, size_t n, double lr, double momentum, double wd);
void lars_step(double* param, double* buf, const double* grad, size_t n, double lr, double momentum, double wd,
               double trust, bool adapt);
void ema_update(double* target, const double* online, size_t n, double m);

}  // namespace ref
