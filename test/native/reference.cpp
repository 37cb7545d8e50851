// reference.cpp: see reference.h. Naive float64 loops, written for clarity, never for speed.
#include "reference.h"

#include <cmath>
#include <limits>

namespace ref {

void gemm(bool transA, bool transB, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
          int ldb, double beta, double* C, int ldc) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        const double a = transA ? A[k * lda + i] : A[i * lda + k];
        const double b = transB ? B[j * ldb + k] : B[k * ldb + j];
        s += a * b;
      }
      double& c = C[i * ldc + j];
      c = beta == 0 ? alpha * s : alpha * s + beta * c;
    }
}

void nchw_to_nhwc(double* dst, const double* src, int N, int C, int H, int W) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w)
          dst[((static_cast<size_t>(n) * H + h) * W + w) * C + c] = src[((static_cast<size_t>(n) * C + c) * H + h) * W + w];
}

namespace {
size_t xi(const mveb::ConvShape& s, int n, int h, int w, int c) {
  return ((static_cast<size_t>(n) * s.H + h) * s.W + w) * s.C + c;
}
size_t wi(const mveb::ConvShape& s, int k, int r, int q, int c) {
  return ((static_cast<size_t>(k) * s.R + r) * s.S + q) * s.C + c;
}
size_t yi(const mveb::ConvShape& s, int n, int p, int q, int k) {
  return ((static_cast<size_t>(n) * s.P() + p) * s.Q() + q) * s.K + k;
}
}  // namespace

void conv2d_forward(double* y, const double* x, const double* w, const mveb::ConvShape& s) {
  for (int n = 0; n < s.N; ++n)
    for (int p = 0; p < s.P(); ++p)
      for (int q = 0; q < s.Q(); ++q)
        for (int k = 0; k < s.K; ++k) {
          double acc = 0;
          for (int r = 0; r < s.R; ++r)
            for (int t = 0; t < s.S; ++t) {
              const int h = p * s.stride - s.pad + r, ww = q * s.stride - s.pad + t;
              if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
              for (int c = 0; c < s.C; ++c) acc += x[xi(s, n, h, ww, c)] * w[wi(s, k, r, t, c)];
            }
          y[yi(s, n, p, q, k)] = acc;
        }
}

void conv2d_backward_data(double* dx, const double* dy, const double* w, const mveb::ConvShape& s) {
  for (size_t i = 0; i < static_cast<size_t>(s.N) * s.H * s.W * s.C; ++i) dx[i] = 0;
  for (int n = 0; n < s.N; ++n)
    for (int p = 0; p < s.P(); ++p)
      for (int q = 0; q < s.Q(); ++q)
        for (int k = 0; k < s.K; ++k)
          for (int r = 0; r < s.R; ++r)
            for (int t = 0; t < s.S; ++t) {
              const int h = p * s.stride - s.pad + r, ww = q * s.stride - s.pad + t;
              if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
              for (int c = 0; c < s.C; ++c) dx[xi(s, n, h, ww, c)] += dy[yi(s, n, p, q, k)] * w[wi(s, k, r, t, c)];
            }
}

void conv2d_backward_weight(double* dw, const double* dy, const double* x, const mveb::ConvShape& s) {
  for (size_t i = 0; i < static_cast<size_t>(s.K) * s.R * s.S * s.C; ++i) dw[i] = 0;
  for (int n = 0; n < s.N; ++n)
    for (int p = 0; p < s.P(); ++p)
      for (int q = 0; q < s.Q(); ++q)
        for (int k = 0; k < s.K; ++k)
          for (int r = 0; r < s.R; ++r)
            for (int t = 0; t < s.S; ++t) {
              const int h = p * s.stride - s.pad + r, ww = q * s.stride - s.pad + t;
              if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
              for (int c = 0; c < s.C; ++c) dw[wi(s, k, r, t, c)] += dy[yi(s, n, p, q, k)] * x[xi(s, n, h, ww, c)];
            }
}

void batchnorm_forward_train(double* y, double* mean, double* invstd, double* running_mean, double* running_var,
                             const double* x, const double* gamma, const double* beta, const double* residual,
                             bool relu, int M, int C, double momentum, double eps) {
  for (int c = 0; c < C; ++c) {
    double m = 0;
    for (int i = 0; i < M; ++i) m += x[static_cast<size_t>(i) * C + c];
    m /= M;
    double v = 0;
    for (int i = 0; i < M; ++i) v += (x[static_cast<size_t>(i) * C + c] - m) * (x[static_cast<size_t>(i) * C + c] - m);
    v /= M;
    mean[c] = m;
    invstd[c] = 1 / std::sqrt(v + eps);
    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * m;
    running_var[c] = (1 - momentum) * running_var[c] + momentum * v * M / (M - 1);
    for (int i = 0; i < M; ++i) {
      const size_t j = static_cast<size_t>(i) * C + c;
      double o = gamma[c] * (x[j] - m) * invstd[c] + beta[c] + (residual ? residual[j] : 0);
      y[j] = relu && o < 0 ? 0 : o;
    }
  }
}

void batchnorm_forward_eval(double* y, const double* x, const double* gamma, const double* beta,
                            const double* running_mean, const double* running_var, const double* residual, bool relu,
                            int M, int C, double eps) {
  for (int c = 0; c < C; ++c)
    for (int i = 0; i < M; ++i) {
      const size_t j = static_cast<size_t>(i) * C + c;
      double o = gamma[c] * (x[j] - running_mean[c]) / std::sqrt(running_var[c] + eps) + beta[c] +
                 (residual ? residual[j] : 0);
      y[j] = relu && o < 0 ? 0 : o;
    }
}

void batchnorm_backward(double* dx, double* dresidual, double* dgamma, double* dbeta, const double* dy,
                        const double* y, const double* x, const double* gamma, const double* mean,
                        const double* invstd, bool relu, bool train, int M, int C) {
  for (int c = 0; c < C; ++c) {
    double sg = 0, sgx = 0;
    for (int i = 0; i < M; ++i) {
      const size_t j = static_cast<size_t>(i) * C + c;
      const double g = relu && !(y[j] > 0) ? 0 : dy[j];
      const double xhat = (x[j] - mean[c]) * invstd[c];
      sg += g;
      sgx += g * xhat;
    }
    dgamma[c] = sgx;
    dbeta[c] = sg;
    for (int i = 0; i < M; ++i) {
      const size_t j = static_cast<size_t>(i) * C + c;
      const double g = relu && !(y[j] > 0) ? 0 : dy[j];
      const double xhat = (x[j] - mean[c]) * invstd[c];
      if (dresidual) dresidual[j] = g;
      dx[j] = train ? gamma[c] * invstd[c] * (g - sg / M - xhat * sgx / M) : gamma[c] * invstd[c] * g;
    }
  }
}

void relu_forward(double* y, const double* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = x[i] > 0 ? x[i] : 0;
}
void relu_backward(double* dx, const double* dy, const double* y, size_t n) {
  for (size_t i = 0; i < n; ++i) dx[i] = y[i] > 0 ? dy[i] : 0;
}

void maxpool2d_forward(double* y, int32_t* argmax, const double* x, const mveb::PoolShape& s) {
  const int P = s.P(), Q = s.Q();
  for (int n = 0; n < s.N; ++n)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q)
        for (int c = 0; c < s.C; ++c) {
          double best = -std::numeric_limits<double>::infinity();
          int32_t arg = -1;
          for (int r = 0; r < s.kernel; ++r)
            for (int t = 0; t < s.kernel; ++t) {
              const int h = p * s.stride - s.pad + r, w = q * s.stride - s.pad + t;
              if (h < 0 || h >= s.H || w < 0 || w >= s.W) continue;
              const int32_t idx = static_cast<int32_t>(((static_cast<int64_t>(n) * s.H + h) * s.W + w) * s.C + c);
              if (arg < 0 || x[idx] > best || std::isnan(x[idx])) {  // a NaN wins (PyTorch: the last one)
                best = x[idx];
                arg = idx;
              }
            }
          const size_t o = ((static_cast<size_t>(n) * P + p) * Q + q) * s.C + c;
          y[o] = best;
          argmax[o] = arg;
        }
}

void maxpool2d_backward(double* dx, const double* dy, const int32_t* argmax, const mveb::PoolShape& s) {
  const size_t in = static_cast<size_t>(s.N) * s.H * s.W * s.C, out = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
  for (size_t i = 0; i < in; ++i) dx[i] = 0;
  for (size_t o = 0; o < out; ++o) dx[argmax[o]] += dy[o];
}

void global_avgpool_forward(double* y, const double* x, int N, int HW, int C) {
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) {
      double s = 0;
      for (int p = 0; p < HW; ++p) s += x[(static_cast<size_t>(n) * HW + p) * C + c];
      y[static_cast<size_t>(n) * C + c] = s / HW;
    }
}

void global_avgpool_backward(double* dx, const double* dy, int N, int HW, int C) {
  for (int n = 0; n < N; ++n)
    for (int p = 0; p < HW; ++p)
      for (int c = 0; c < C; ++c) dx[(static_cast<size_t>(n) * HW + p) * C + c] = dy[static_cast<size_t>(n) * C + c] / HW;
}

void sgd_step(double* param, double* buf, const double* grad, size_t n, double lr, double momentum, double wd) {
  for (size_t i = 0; i < n; ++i) {
    const double g = grad[i] + wd * param[i];
    buf[i] = momentum * buf[i] + g;
    param[i] -= lr * buf[i];
  }
}

void lars_step(double* param, double* buf, const double* grad, size_t n, double lr, double momentum, double wd,
               double trust, bool adapt) {
  Vec g(n);
  double pn = 0, gn = 0;
  for (size_t i = 0; i < n; ++i) {
    g[i] = grad[i] + wd * param[i];
    pn += param[i] * param[i];
    gn += g[i] * g[i];
  }
  pn = std::sqrt(pn);
  gn = std::sqrt(gn);
  const double scale = adapt && pn > 0 && gn > 0 ? trust * pn / gn : 1;
  for (size_t i = 0; i < n; ++i) {
    buf[i] = momentum * buf[i] + g[i] * scale;
    param[i] -= lr * buf[i];
  }
}

void ema_update(double* target, const double* online, size_t n, double m) {
  for (size_t i = 0; i < n; ++i) target[i] = m * target[i] + (1 - m) * online[i];
}

}  // namespace ref
