// batchnorm.cpp: batch norm over rows [M, C] (BN2d on NHWC with M = N*H*W) with the residual add and
// ReLU fused, PyTorch semantics: batch mean and biased variance normalise; running_var takes the
// unbiased variance (M / (M - 1)) with running = (1 - momentum) running + momentum batch. Threads
// split the rows; per-thread per-channel partial sums are combined in double (the training forward takes
// both moments in one pass, shifted by the first row). The row loops are in batchnorm_kernels.h,
// compiled per ISA (this file: baseline; batchnorm_avx2.cpp, batchnorm_avx512.cpp). Backward with
// ReLU and a residual gradient writes the masked gradient into dresidual during its sums pass, so its
// second pass reads that and x instead of dy, the mask and x. The ReLU pattern travels from the
// forward to the backward as a bit mask (core/backend.h), not as y: the backward's two passes read
// 1 bit instead of 32 per element for it (resnet50 b16 step: backward 0.162 -> 0.134 s).
// The training forward takes the batch statistics from the convolution before it when that computed
// them on its output chunks (conv2d_forward_stats; block_moments / merge_moments below), and skips
// its own statistics pass.
// Tested by test/native/test_kernels.cpp ("kernels: batchnorm ...") against the float64 reference,
// whose backward is itself checked by finite differences.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/batchnorm_kernels.h"
#include "cpu/batchnorm_fusion.h"
#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

namespace {
constexpr int kRowBlock = 32;  // rows summed in float before going to double

int64_t row_grain(int C) { return std::max<int64_t>(kRowBlock, (1 << 14) / std::max(1, C)); }

// out[o * C + c] = sum over rows of the outputs (o < 2) that fn(m0, m1, acc) adds into acc (2 x C
// floats, zeroed) for rows [m0, m1): float over blocks of kRowBlock rows, double per thread and overall.
template <typename BlockFn>
void channel_sums(ThreadPool& pool, int M, int C, std::vector<double>& out, BlockFn fn) {
  const int T = pool.size();
  std::vector<double> partial(static_cast<size_t>(T) * 2 * C, 0.0);
  pool.parallel_for(M, row_grain(C), [&](int64_t b, int64_t e, int t) {
    std::vector<float> block(static_cast<size_t>(2) * C);
    double* acc = partial.data() + static_cast<size_t>(t) * 2 * C;
    for (int64_t m0 = b; m0 < e; m0 += kRowBlock) {
      std::fill(block.begin(), block.end(), 0.f);
      fn(m0, std::min(e, m0 + kRowBlock), block.data());
      for (size_t i = 0; i < block.size(); ++i) acc[i] += block[i];
    }
  });
  out.assign(static_cast<size_t>(2) * C, 0.0);
  for (int t = 0; t < T; ++t)
    for (size_t i = 0; i < out.size(); ++i) out[i] += partial[static_cast<size_t>(t) * 2 * C + i];
}

BatchnormKernels kernels_for(Isa isa) {
  return isa == Isa::Avx512 ? batchnorm_kernels_avx512()
         : isa == Isa::Avx2 ? batchnorm_kernels_avx2()
                            : batchnorm_kernels_scalar();
}

void check_bn(const char* op, int M, int C) {
  check_nonnegative(op, "M", M);
  check_nonnegative(op, "C", C);
}

// Rows of 8 channels on AVX-512 (16 lanes) are processed as rows of 16, two rows each, in the same
// memory: every per-row pass vectorises (C = 8 is all scalar tail otherwise) and the ReLU mask has the
// same bytes (one per original row); per-channel arrays are tiled twice and per-channel sums folded.
// The fold factor (1: none) for M rows of C channels.
int fold_factor(Isa isa, int64_t M, int C) { return isa == Isa::Avx512 && C == 8 && M % 2 == 0 ? 2 : 1; }
std::vector<float> tiled(const float* v, int C, int f) {
  std::vector<float> t(static_cast<size_t>(C) * f);
  for (int j = 0; j < f; ++j) std::copy(v, v + C, t.begin() + static_cast<int64_t>(j) * C);
  return t;
}
// sums (2 C f: f copies of C per half) -> 2 C
void fold_sums(std::vector<double>& sums, int C, int f) {
  std::vector<double> out(static_cast<size_t>(2) * C, 0.0);
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < f; ++j)
      for (int c = 0; c < C; ++c) out[static_cast<size_t>(h) * C + c] += sums[(static_cast<size_t>(h) * f + j) * C + c];
  sums.swap(out);
}

// y = act(x * scale + shift + residual) over rows (and the ReLU mask when relu and mask).
void apply_affine(CpuBackend& be, const BatchnormKernels& k, float* y, uint8_t* mask, const float* x,
                  const float* scale, const float* shift, const float* residual, bool relu, int M, int C) {
  const int f = fold_factor(be.isa(), M, C);
  std::vector<float> scale_t, shift_t;
  if (f > 1) {
    scale_t = tiled(scale, C, f), shift_t = tiled(shift, C, f);
    scale = scale_t.data(), shift = shift_t.data();
    M /= f, C *= f;
  }
  const bool stream = be.streams(M, C);
  be.pool().parallel_for(M, row_grain(C), [&](int64_t b, int64_t e, int) {
    k.apply(y, mask, x, scale, shift, residual, relu, b, e, C, stream);
  });
}
}  // namespace

MVEB_DEFINE_BATCHNORM_KERNELS(batchnorm_kernels_scalar)

namespace {
// out = the moments of n rows from their sums shifted by `shift` (sums[c] = sum of x - shift[c],
// sums[C + c] = sum of its squares): mean = shift + the shifted mean, m2 = squared deviations.
void moments_from_sums(const std::vector<double>& sums, const float* shift, int64_t n, int C, ChannelMoments& out) {
  out.n = n;
  out.mean.assign(static_cast<size_t>(C), 0.0);
  out.m2.assign(static_cast<size_t>(C), 0.0);
  for (int c = 0; c < C; ++c) {
    const double md = sums[static_cast<size_t>(c)] / static_cast<double>(n);
    out.mean[static_cast<size_t>(c)] = shift[c] + md;
    out.m2[static_cast<size_t>(c)] = std::max(0.0, sums[static_cast<size_t>(C + c)] - md * md * static_cast<double>(n));
  }
}
}  // namespace

void block_moments(Isa isa, const float* y, int64_t rows, int C, ChannelMoments& out, float* copy) {
  if (rows == 0) {
    out.n = 0;
    out.mean.assign(static_cast<size_t>(C), 0.0);
    out.m2.assign(static_cast<size_t>(C), 0.0);
    return;
  }
  const BatchnormKernels k = kernels_for(isa);
  // 8 channels on AVX-512: pairs of rows as rows of 16 (fold_factor; the shift row tiled), so the
  // sums vectorise (N512 C8 K8 28x28 3x3 forward with statistics, one thread: 8.2-8.6 -> 6.9-7.5 ms;
  // in the default pretrain encoder's b512 step its four C8 forwards 34-35 -> 29-30 ms)
  const int f = fold_factor(isa, rows, C), Cf = C * f;
  const std::vector<float> shift = tiled(y, C, f);
  const int64_t frows = rows / f;
  std::vector<float> block(static_cast<size_t>(2) * Cf);
  std::vector<double> sums(static_cast<size_t>(2) * Cf, 0.0);
  for (int64_t m0 = 0; m0 < frows; m0 += kRowBlock) {
    std::fill(block.begin(), block.end(), 0.f);
    k.forward_sums(y, shift.data(), m0, std::min(frows, m0 + kRowBlock), Cf, block.data(), block.data() + Cf, copy);
    for (size_t i = 0; i < block.size(); ++i) sums[i] += block[i];
  }
  fold_sums(sums, C, f);
  moments_from_sums(sums, y, rows, C, out);  // shifted by the first row y[0, :]
}

void merge_moments(ChannelMoments& a, const ChannelMoments& b) {
  if (b.n == 0) return;
  if (a.n == 0) {
    a = b;
    return;
  }
  const double na = static_cast<double>(a.n), nb = static_cast<double>(b.n), n = na + nb;
  for (size_t c = 0; c < a.mean.size(); ++c) {
    const double delta = b.mean[c] - a.mean[c];
    a.mean[c] += delta * nb / n;
    a.m2[c] += b.m2[c] + delta * delta * na * nb / n;
  }
  a.n += b.n;
}

void finish_moments(const std::vector<ChannelMoments>& blocks, int C, double* stats) {
  ChannelMoments all;
  for (const ChannelMoments& b : blocks) merge_moments(all, b);
  for (int c = 0; c < C; ++c) {
    stats[c] = all.n ? all.mean[static_cast<size_t>(c)] : 0.0;
    stats[C + c] = all.n ? all.m2[static_cast<size_t>(c)] / static_cast<double>(all.n) : 0.0;
  }
}

void CpuBackend::batchnorm_forward_train(float* y, uint8_t* relu_mask, float* saved_mean, float* saved_invstd,
                                         float* running_mean, float* running_var, const float* x, const float* gamma,
                                         const float* beta, const float* residual, bool relu, int M, int C,
                                         float momentum, float eps, const double* batch_stats) {
  check_bn("batchnorm_forward_train", M, C);
  MVEB_CHECK(M >= 2, "E_SHAPE", "batchnorm_forward_train: expected more than 1 value per channel when training, found ",
             M, " rows");
  const BatchnormKernels k = kernels_for(isa());
  std::vector<float> mean(static_cast<size_t>(C));
  std::vector<double> var(static_cast<size_t>(C));
  if (batch_stats) {  // from the convolution that wrote x (conv2d_forward_stats)
    for (int c = 0; c < C; ++c) {
      mean[c] = static_cast<float>(batch_stats[c]);
      var[c] = batch_stats[C + c];
    }
  } else {
    // One pass for both moments, shifted by the first row (d = x - x[0]) so that the variance
    // E[d^2] - E[d]^2 does not cancel when the mean is large against the spread.
    const float* shift0 = x;
    const int f = fold_factor(isa(), M, C), Cf = C * f;
    const std::vector<float> shift_t = tiled(shift0, C, f);
    std::vector<double> sums;
    channel_sums(pool(), M / f, Cf, sums, [&](int64_t m0, int64_t m1, float* acc) {
      k.forward_sums(x, shift_t.data(), m0, m1, Cf, acc, acc + Cf, nullptr);
    });
    fold_sums(sums, C, f);
    ChannelMoments m;
    moments_from_sums(sums, shift0, M, C, m);
    for (int c = 0; c < C; ++c) {
      mean[c] = static_cast<float>(m.mean[c]);
      var[c] = m.m2[c] / M;  // biased: squared deviations / M
    }
  }
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) {
    const float invstd = static_cast<float>(1.0 / std::sqrt(var[c] + eps));
    saved_mean[c] = mean[c];
    saved_invstd[c] = invstd;
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * var[c] * M / (M - 1));
    scale[c] = gamma[c] * invstd;
    shift[c] = beta[c] - mean[c] * scale[c];
  }
  apply_affine(*this, k, y, relu_mask, x, scale.data(), shift.data(), residual, relu, M, C);
}

void CpuBackend::batchnorm_forward_eval(float* y, uint8_t* relu_mask, const float* x, const float* gamma,
                                        const float* beta, const float* running_mean, const float* running_var,
                                        const float* residual, bool relu, int M, int C, float eps) {
  check_bn("batchnorm_forward_eval", M, C);
  std::vector<float> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) {
    const float invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
    scale[c] = gamma[c] * invstd;
    shift[c] = beta[c] - running_mean[c] * scale[c];
  }
  apply_affine(*this, kernels_for(isa()), y, relu_mask, x, scale.data(), shift.data(), residual, relu, M, C);
}

BatchnormBackward batchnorm_backward_sums(CpuBackend& be, float* dresidual, float* dgamma, float* dbeta,
                                          const float* dy, const uint8_t* relu_mask, const float* x,
                                          const float* gamma, const float* mean, const float* invstd, bool relu,
                                          bool train, int M, int C, bool allow_fold) {
  const BatchnormKernels k = kernels_for(be.isa());
  // g = dy masked by the ReLU; sums of g and g * xhat per channel. With a residual gradient, g goes
  // into dresidual on the way (it is that gradient) and the second pass reads it back.
  const uint8_t* mask = relu ? relu_mask : nullptr;  // the ReLU mask (null without ReLU)
  const int f = allow_fold ? fold_factor(be.isa(), M, C) : 1, Cf = C * f;
  std::vector<float> mean_t = tiled(mean, C, f);
  std::vector<double> sums;
  channel_sums(be.pool(), M / f, Cf, sums, [&](int64_t m0, int64_t m1, float* acc) {
    k.backward_sums(dy, mask, x, mean_t.data(), dresidual, m0, m1, Cf, acc, acc + Cf);
  });
  fold_sums(sums, C, f);
  // dgamma = sum g xhat = invstd * sum g (x - mean); dbeta = sum g.
  BatchnormBackward bn{be.isa(), std::vector<float>(static_cast<size_t>(C)), std::vector<float>(static_cast<size_t>(C)),
                       std::vector<float>(static_cast<size_t>(C)), dresidual ? dresidual : dy,
                       dresidual ? nullptr : mask, x, std::move(mean_t), C, f};  // dresidual holds g (masked) already
  for (int c = 0; c < C; ++c) {
    const double sg = sums[c], sgx = sums[C + c];
    dbeta[c] += static_cast<float>(sg);
    dgamma[c] += static_cast<float>(sgx * invstd[c]);
    // dx = a g + b (x - mean) + c0 (eval: an affine map, b = c0 = 0)
    const double gk = static_cast<double>(gamma[c]) * invstd[c];
    bn.a[c] = static_cast<float>(gk);
    bn.b[c] = train ? static_cast<float>(-gk * invstd[c] * invstd[c] * sgx / M) : 0.f;
    bn.c0[c] = train ? static_cast<float>(-gk * sg / M) : 0.f;
  }
  if (f > 1) bn.a = tiled(bn.a.data(), C, f), bn.b = tiled(bn.b.data(), C, f), bn.c0 = tiled(bn.c0.data(), C, f);
  bn.C = Cf;
  return bn;
}

void batchnorm_backward_rows(const BatchnormBackward& bn, float* out, int64_t r0, int64_t r1, bool stream) {
  r0 /= bn.fold, r1 /= bn.fold;  // (folded: the caller's rows are pairs)
  const int C = bn.C;
  const size_t mask_row = relu_mask_row_bytes(C);
  kernels_for(bn.isa).backward_apply(out, bn.g + r0 * C, bn.g_mask ? bn.g_mask + r0 * mask_row : nullptr,
                                     bn.x + r0 * C, bn.mean.data(), bn.a.data(), bn.b.data(), bn.c0.data(), 0, r1 - r0,
                                     C, stream);
}

void CpuBackend::batchnorm_backward(float* dx, float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                    const uint8_t* relu_mask, const float* x, const float* gamma, const float* mean,
                                    const float* invstd, bool relu, bool train, int M, int C) {
  check_bn("batchnorm_backward", M, C);
  check_relu_mask("batchnorm_backward", relu, relu_mask);
  if (M == 0) return;
  const BatchnormBackward bn = batchnorm_backward_sums(*this, dresidual, dgamma, dbeta, dy, relu_mask, x, gamma,
                                                       mean, invstd, relu, train, M, C, true);
  const int f = bn.fold, Cf = bn.C;  // rows of Cf channels, f original rows each
  const bool stream = streams(M / f, Cf);
  pool().parallel_for(M / f, row_grain(Cf), [&](int64_t b, int64_t e, int) {
    batchnorm_backward_rows(bn, dx + b * Cf, b * f, e * f, stream);
  });
}

}  // namespace mveb
