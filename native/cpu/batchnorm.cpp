// batchnorm.cpp: batch norm over rows [M, C] (BN2d on NHWC with M = N*H*W) with the residual add and
// ReLU fused, PyTorch semantics: batch mean and biased variance normalise; running_var takes the
// unbiased variance (M / (M - 1)) with running = (1 - momentum) running + momentum batch. Threads
// split the rows; per-thread per-channel partial sums are combined in double (the training forward takes
// both moments in one pass, shifted by the first row); the inner loops run over
// C (contiguous) so the compiler vectorises them.
// Tested by test/native/test_kernels.cpp ("kernels: batchnorm ...") against the float64 reference,
// whose backward is itself checked by finite differences.
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

namespace {
constexpr int kRowBlock = 32;  // rows summed in float before going to double

int64_t row_grain(int C) { return std::max<int64_t>(kRowBlock, (1 << 14) / std::max(1, C)); }

// out[c] = sum over rows of f(row, c) via per-thread double partials.
template <typename RowFn>
void channel_sums(ThreadPool& pool, int M, int C, int outputs, std::vector<double>& out, RowFn fn) {
  const int T = pool.size();
  std::vector<double> partial(static_cast<size_t>(T) * outputs * C, 0.0);
  pool.parallel_for(M, row_grain(C), [&](int64_t b, int64_t e, int t) {
    std::vector<float> block(static_cast<size_t>(outputs) * C);
    double* acc = partial.data() + static_cast<size_t>(t) * outputs * C;
    for (int64_t m0 = b; m0 < e; m0 += kRowBlock) {
      std::fill(block.begin(), block.end(), 0.f);
      const int64_t m1 = std::min(e, m0 + kRowBlock);
      for (int64_t m = m0; m < m1; ++m) fn(m, block.data());
      for (size_t i = 0; i < block.size(); ++i) acc[i] += block[i];
    }
  });
  out.assign(static_cast<size_t>(outputs) * C, 0.0);
  for (int t = 0; t < T; ++t)
    for (size_t i = 0; i < out.size(); ++i) out[i] += partial[static_cast<size_t>(t) * outputs * C + i];
}

void check_bn(const char* op, int M, int C) {
  check_nonnegative(op, "M", M);
  check_nonnegative(op, "C", C);
}

// y = act(x * scale + shift + residual) over rows.
void apply_affine(ThreadPool& pool, float* y, const float* x, const float* scale, const float* shift,
                  const float* residual, bool relu, int M, int C) {
  pool.parallel_for(M, row_grain(C), [&](int64_t b, int64_t e, int) {
    for (int64_t m = b; m < e; ++m) {
      const float* xr = x + m * C;
      float* yr = y + m * C;
      if (residual) {
        const float* rr = residual + m * C;
        for (int c = 0; c < C; ++c) yr[c] = xr[c] * scale[c] + shift[c] + rr[c];
      } else {
        for (int c = 0; c < C; ++c) yr[c] = xr[c] * scale[c] + shift[c];
      }
      if (relu)
        for (int c = 0; c < C; ++c) yr[c] = yr[c] > 0.f ? yr[c] : 0.f;
    }
  });
}
}  // namespace

void CpuBackend::batchnorm_forward_train(float* y, float* saved_mean, float* saved_invstd, float* running_mean,
                                         float* running_var, const float* x, const float* gamma, const float* beta,
                                         const float* residual, bool relu, int M, int C, float momentum,
                                         float eps) {
  check_bn("batchnorm_forward_train", M, C);
  MVEB_CHECK(M >= 2, "E_SHAPE", "batchnorm_forward_train: expected more than 1 value per channel when training, found ",
             M, " rows");
  // One pass for both moments, shifted by the first row (d = x - x[0]) so that the variance
  // E[d^2] - E[d]^2 does not cancel when the mean is large against the spread.
  const float* shift0 = x;
  std::vector<double> sums;
  channel_sums(pool(), M, C, 2, sums, [&](int64_t m, float* acc) {
    const float* xr = x + m * C;
    float* s1 = acc;
    float* s2 = acc + C;
    for (int c = 0; c < C; ++c) {
      const float d = xr[c] - shift0[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  });
  std::vector<float> mean(static_cast<size_t>(C));
  std::vector<double> sq(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) {
    const double md = sums[c] / M;
    mean[c] = static_cast<float>(shift0[c] + md);
    sq[c] = std::max(0.0, sums[C + c] - md * md * M);  // sum of squared deviations from the mean
  }
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) {
    const double var = sq[c] / M;
    const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    saved_mean[c] = mean[c];
    saved_invstd[c] = invstd;
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * var * M / (M - 1));
    scale[c] = gamma[c] * invstd;
    shift[c] = beta[c] - mean[c] * scale[c];
  }
  apply_affine(pool(), y, x, scale.data(), shift.data(), residual, relu, M, C);
}

void CpuBackend::batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                                        const float* running_mean, const float* running_var, const float* residual,
                                        bool relu, int M, int C, float eps) {
  check_bn("batchnorm_forward_eval", M, C);
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) {
    const float invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
    scale[c] = gamma[c] * invstd;
    shift[c] = beta[c] - running_mean[c] * scale[c];
  }
  apply_affine(pool(), y, x, scale.data(), shift.data(), residual, relu, M, C);
}

void CpuBackend::batchnorm_backward(float* dx, float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                    const float* y, const float* x, const float* gamma, const float* mean,
                                    const float* invstd, bool relu, bool train, int M, int C) {
  check_bn("batchnorm_backward", M, C);
  if (M == 0) return;
  // g = dy masked by the ReLU; sums of g and g * xhat per channel.
  std::vector<double> sums;
  channel_sums(pool(), M, C, 2, sums, [&](int64_t m, float* acc) {
    const float* dyr = dy + m * C;
    const float* yr = y + m * C;
    const float* xr = x + m * C;
    float* sg = acc;
    float* sgx = acc + C;
    if (relu) {
      for (int c = 0; c < C; ++c) {
        const float d = dyr[c], yv = yr[c];  // both loads unconditional: the select vectorises
        const float g = yv > 0.f ? d : 0.f;
        sg[c] += g;
        sgx[c] += g * (xr[c] - mean[c]);
      }
    } else {
      for (int c = 0; c < C; ++c) {
        sg[c] += dyr[c];
        sgx[c] += dyr[c] * (xr[c] - mean[c]);
      }
    }
  });
  // dgamma = sum g xhat = invstd * sum g (x - mean); dbeta = sum g.
  std::vector<float> a(static_cast<size_t>(C)), bcoef(static_cast<size_t>(C)), ccoef(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) {
    const double sg = sums[c], sgx = sums[C + c];
    dbeta[c] += static_cast<float>(sg);
    dgamma[c] += static_cast<float>(sgx * invstd[c]);
    // dx = a g + b (x - mean) + c0
    const double k = static_cast<double>(gamma[c]) * invstd[c];
    if (train) {
      a[c] = static_cast<float>(k);
      bcoef[c] = static_cast<float>(-k * invstd[c] * invstd[c] * sgx / M);
      ccoef[c] = static_cast<float>(-k * sg / M);
    } else {
      a[c] = static_cast<float>(k);
      bcoef[c] = 0.f;
      ccoef[c] = 0.f;
    }
  }
  pool().parallel_for(M, row_grain(C), [&](int64_t b, int64_t e, int) {
    for (int64_t m = b; m < e; ++m) {
      const float* dyr = dy + m * C;
      const float* yr = y + m * C;
      const float* xr = x + m * C;
      float* dxr = dx + m * C;
      const float* g = dyr;
      if (relu) {  // g = dy masked by the ReLU, kept in dresidual (or in dx) for the next loop
        float* gr = dresidual ? dresidual + m * C : dxr;
        for (int c = 0; c < C; ++c) {
          const float d = dyr[c], yv = yr[c];
          gr[c] = yv > 0.f ? d : 0.f;
        }
        g = gr;
      } else if (dresidual) {
        float* gr = dresidual + m * C;
        for (int c = 0; c < C; ++c) gr[c] = dyr[c];
      }
      const float* am = a.data();
      const float* bm = bcoef.data();
      const float* cm = ccoef.data();
      for (int c = 0; c < C; ++c) dxr[c] = am[c] * g[c] + bm[c] * (xr[c] - mean[c]) + cm[c];
    }
  });
}

}  // namespace mveb
