// batchnorm.cu: batch norm over rows [M, C] (train / eval / backward, fused residual add and ReLU,
// PyTorch semantics as documented in core/backend.h) and sum_rows, for the CUDA backend.
// Test: `mveb_native_tests cuda:` on a GPU machine (test/native/test_cuda.cpp compares with the CPU).
//
// Per-channel statistics are column reductions of a row-major [M, C] matrix: blocks of 32 channels
// x 8 row lanes (a warp reads 32 consecutive channels of one row, 128 B), the rows split across
// blockIdx.y so that about 4 blocks per SM are busy; each block writes double partial sums per
// split, and a per-channel finalize kernel adds the splits in a fixed order (deterministic).
// Variance is two-pass (sum of (x - mean)^2 with the double mean), never E[x^2] - mean^2.
// Memory traffic: train forward reads x three times and writes y once (~4 x 4 B per element); with
// ReLU a second kernel reads y back for the bit mask the backward reads instead of y.
#include <cuda_runtime.h>

#include "core/op_checks.h"  // argument checks shared with the CPU backend
#include "cuda/cuda_backend.h"

namespace mveb {
namespace {

constexpr int kColLanes = 8;  // row lanes per column-reduction block (block = 32 x 8)

enum ColumnMode { kSum = 0, kSquaredDeviation = 1, kBackward = 2 };

// Bit c of row r of a ReLU mask (core/backend.h: rows of (C + 7) / 8 bytes).
__device__ __forceinline__ bool mask_bit(const uint8_t* mask, long long r, int c, int C) {
  return (mask[r * ((C + 7) / 8) + c / 8] >> (c % 8)) & 1;
}

// Partial column sums over rows [split * rows_per_split, ...):
//   kSum:              out[split, c] = sum x
//   kSquaredDeviation: out[split, c] = sum (x - mean_d[c])^2
//   kBackward:         out = sum g, out2 = sum g * (x - mean_f[c]), g = dy masked by the ReLU mask
//                      when it is not null
__global__ void column_partials_kernel(int mode, const float* __restrict__ x, const double* __restrict__ mean_d,
                                       const float* __restrict__ mean_f, const float* __restrict__ dy,
                                       const uint8_t* __restrict__ mask, int M, int C, int rows_per_split,
                                       double* __restrict__ out, double* __restrict__ out2) {
  __shared__ double sh1[kColLanes][32];
  __shared__ double sh2[kColLanes][32];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int split = blockIdx.y;
  const long long r0 = static_cast<long long>(split) * rows_per_split;
  const long long r1 = min(static_cast<long long>(M), r0 + rows_per_split);
  double s1 = 0, s2 = 0;
  if (c < C) {
    if (mode == kSum) {
      for (long long r = r0 + threadIdx.y; r < r1; r += kColLanes) s1 += x[r * C + c];
    } else if (mode == kSquaredDeviation) {
      const double mu = mean_d[c];
      for (long long r = r0 + threadIdx.y; r < r1; r += kColLanes) {
        double d = static_cast<double>(x[r * C + c]) - mu;
        s1 += d * d;
      }
    } else {
      const double mu = mean_f[c];
      for (long long r = r0 + threadIdx.y; r < r1; r += kColLanes) {
        long long i = r * C + c;
        float g = dy[i];
        if (mask && !mask_bit(mask, r, c, C)) g = 0.f;
        s1 += g;
        s2 += static_cast<double>(g) * (static_cast<double>(x[i]) - mu);
      }
    }
  }
  sh1[threadIdx.y][threadIdx.x] = s1;
  sh2[threadIdx.y][threadIdx.x] = s2;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double t1 = 0, t2 = 0;
    for (int l = 0; l < kColLanes; ++l) t1 += sh1[l][threadIdx.x], t2 += sh2[l][threadIdx.x];
    out[static_cast<long long>(split) * C + c] = t1;
    if (out2) out2[static_cast<long long>(split) * C + c] = t2;
  }
}

__device__ __forceinline__ double sum_splits(const double* p, int splits, int C, int c) {
  double s = 0;
  for (int k = 0; k < splits; ++k) s += p[static_cast<long long>(k) * C + c];
  return s;
}

__global__ void bn_mean_kernel(double* __restrict__ mean_d, float* __restrict__ saved_mean,
                               const double* __restrict__ partial, int splits, int M, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double mean = sum_splits(partial, splits, C, c) / M;
  mean_d[c] = mean;
  saved_mean[c] = static_cast<float>(mean);
}

__global__ void bn_var_kernel(float* __restrict__ saved_invstd, float* __restrict__ running_mean,
                              float* __restrict__ running_var, const double* __restrict__ mean_d,
                              const double* __restrict__ partial, int splits, int M, int C, float momentum, float eps) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double var = sum_splits(partial, splits, C, c) / M;  // biased, for normalisation
  saved_invstd[c] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
  double unbiased = M > 1 ? var * M / (M - 1) : var;
  if (running_mean)
    running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + static_cast<double>(momentum) * mean_d[c]);
  if (running_var)
    running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + static_cast<double>(momentum) * unbiased);
}

// y = act(gamma * (x - mean) * invstd + beta + residual); invstd either given (train) or
// 1 / sqrt(var + eps) from the running variance (eval).
// (no __restrict__ on y / x / residual: BN may run in place, y == x or y == residual)
__global__ void bn_apply_kernel(float* y, const float* x, const float* __restrict__ gamma,
                                const float* __restrict__ beta, const float* __restrict__ mean,
                                const float* __restrict__ invstd, const float* __restrict__ running_var, float eps,
                                const float* residual, int relu, size_t total, int C) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    int c = static_cast<int>(i % C);
    float inv = invstd ? invstd[c] : 1.0f / sqrtf(running_var[c] + eps);
    float v = gamma[c] * ((x[i] - mean[c]) * inv) + beta[c];
    if (residual) v += residual[i];
    if (relu) v = v > 0.f ? v : 0.f;
    y[i] = v;
  }
}

// Per channel: dbeta += sum g; dgamma += invstd * sum g (x - mean); coefficients of dx:
// dx = k1 * (g - k2 - (x - mean) * k3), k1 = gamma * invstd, and in train mode k2 = mean(g),
// k3 = invstd^2 * mean(g (x - mean)) (PyTorch's batch-statistics gradient); eval: k2 = k3 = 0.
__global__ void bn_backward_finalize_kernel(float* __restrict__ coef, float* __restrict__ dgamma,
                                            float* __restrict__ dbeta, const double* __restrict__ psum_g,
                                            const double* __restrict__ psum_gx, int splits, const float* __restrict__ gamma,
                                            const float* __restrict__ invstd, int train, int M, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sg = sum_splits(psum_g, splits, C, c);
  double sgx = sum_splits(psum_gx, splits, C, c);
  double inv = invstd[c];
  if (dbeta) dbeta[c] += static_cast<float>(sg);
  if (dgamma) dgamma[c] += static_cast<float>(sgx * inv);
  coef[c] = static_cast<float>(static_cast<double>(gamma[c]) * inv);
  coef[C + c] = train ? static_cast<float>(sg / M) : 0.f;
  coef[2 * C + c] = train ? static_cast<float>(inv * inv * sgx / M) : 0.f;
}

// The ReLU mask of y = relu(v): one thread per mask byte (8 channels of a row), bit set iff y > 0.
__global__ void relu_mask_kernel(uint8_t* __restrict__ mask, const float* __restrict__ y, int M, int C) {
  const int row_bytes = (C + 7) / 8;
  const size_t total = static_cast<size_t>(M) * row_bytes;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    const size_t r = i / row_bytes;
    const int c0 = static_cast<int>(i % row_bytes) * 8;
    const int n = C - c0 < 8 ? C - c0 : 8;
    unsigned bits = 0;
    for (int j = 0; j < n; ++j) bits |= (y[r * C + c0 + j] > 0.f ? 1u : 0u) << j;
    mask[i] = static_cast<uint8_t>(bits);
  }
}

// (no __restrict__ on the per-element arrays: dx or dresidual may alias dy)
__global__ void bn_backward_apply_kernel(float* dx, float* dresidual, const float* dy, const uint8_t* mask,
                                         const float* x, const float* __restrict__ mean,
                                         const float* __restrict__ coef, size_t total, int C) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    int c = static_cast<int>(i % C);
    float g = dy[i];
    if (mask && !mask_bit(mask, static_cast<long long>(i / C), c, C)) g = 0.f;
    float xc = x[i] - mean[c];
    float d = coef[c] * (g - coef[C + c] - xc * coef[2 * C + c]);
    if (dresidual) dresidual[i] = g;
    dx[i] = d;
  }
}

__global__ void add_column_sums_kernel(float* __restrict__ dst, const double* __restrict__ partial, int splits, int C) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  dst[c] += static_cast<float>(sum_splits(partial, splits, C, c));
}

// Row split of a column reduction: about 4 blocks per SM, at least 64 rows per split.
struct ColumnPlan {
  int splits, rows_per_split;
  dim3 grid;
};
ColumnPlan plan_columns(const CudaBackend& be, int M, int C) {
  ColumnPlan p;
  int cblocks = (C + 31) / 32;
  long long want = (4LL * be.sm_count() + cblocks - 1) / cblocks;
  long long max_splits = (M + 63) / 64;
  if (want > max_splits) want = max_splits;
  if (want < 1) want = 1;
  if (want > 65535) want = 65535;
  p.rows_per_split = static_cast<int>((M + want - 1) / want);
  if (p.rows_per_split < 1) p.rows_per_split = 1;
  p.splits = static_cast<int>((M + p.rows_per_split - 1) / p.rows_per_split);
  if (p.splits < 1) p.splits = 1;
  p.grid = dim3(cblocks, p.splits);
  return p;
}

void check_rows(int M, int C, const char* op) {
  check_nonnegative(op, "M", M);
  check_nonnegative(op, "C", C);
}

}  // namespace

void CudaBackend::write_relu_mask(uint8_t* relu_mask, const float* y, bool relu, int M, int C) {
  if (!relu || !relu_mask || M == 0 || C == 0) return;
  relu_mask_kernel<<<elementwise_blocks(relu_mask_bytes(M, C)), 256, 0, stream_>>>(relu_mask, y, M, C);
  MVEB_CUDA_LAUNCH_CHECK("relu_mask_kernel");
}

void CudaBackend::batchnorm_forward_train(float* y, uint8_t* relu_mask, float* saved_mean, float* saved_invstd,
                                          float* running_mean, float* running_var, const float* x, const float* gamma,
                                          const float* beta, const float* residual, bool relu, int M, int C,
                                          float momentum, float eps, const double*) {
  // (batch_stats unused: the column passes below compute the statistics on the device)
  check_rows(M, C, "batchnorm_forward_train");
  MVEB_CHECK(M >= 2, "E_SHAPE", "batchnorm_forward_train: expected more than 1 value per channel when training, found ",
             M, " rows");
  if (C == 0) return;
  ColumnPlan plan = plan_columns(*this, M, C);
  CudaScratch partial(*this, sizeof(double) * plan.splits * C);
  CudaScratch mean_d(*this, sizeof(double) * C);
  const unsigned cb = ceil_div_u(C, 256);
  column_partials_kernel<<<plan.grid, dim3(32, kColLanes), 0, stream_>>>(
      kSum, x, nullptr, nullptr, nullptr, nullptr, M, C, plan.rows_per_split, partial.as<double>(), nullptr);
  MVEB_CUDA_LAUNCH_CHECK("column_partials_kernel");
  bn_mean_kernel<<<cb, 256, 0, stream_>>>(mean_d.as<double>(), saved_mean, partial.as<double>(), plan.splits, M, C);
  MVEB_CUDA_LAUNCH_CHECK("bn_mean_kernel");
  column_partials_kernel<<<plan.grid, dim3(32, kColLanes), 0, stream_>>>(kSquaredDeviation, x, mean_d.as<double>(),
                                                                         nullptr, nullptr, nullptr, M, C,
                                                                         plan.rows_per_split, partial.as<double>(), nullptr);
  MVEB_CUDA_LAUNCH_CHECK("column_partials_kernel");
  bn_var_kernel<<<cb, 256, 0, stream_>>>(saved_invstd, running_mean, running_var, mean_d.as<double>(),
                                          partial.as<double>(), plan.splits, M, C, momentum, eps);
  MVEB_CUDA_LAUNCH_CHECK("bn_var_kernel");
  size_t total = static_cast<size_t>(M) * C;
  bn_apply_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(y, x, gamma, beta, saved_mean, saved_invstd, nullptr,
                                                                  eps, residual, relu ? 1 : 0, total, C);
  MVEB_CUDA_LAUNCH_CHECK("bn_apply_kernel");
  write_relu_mask(relu_mask, y, relu, M, C);
}

void CudaBackend::batchnorm_forward_eval(float* y, uint8_t* relu_mask, const float* x, const float* gamma,
                                         const float* beta, const float* running_mean, const float* running_var,
                                         const float* residual, bool relu, int M, int C, float eps) {
  check_rows(M, C, "batchnorm_forward_eval");
  size_t total = static_cast<size_t>(M) * C;
  if (total == 0) return;
  bn_apply_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(y, x, gamma, beta, running_mean, nullptr, running_var,
                                                                  eps, residual, relu ? 1 : 0, total, C);
  MVEB_CUDA_LAUNCH_CHECK("bn_apply_kernel");
  write_relu_mask(relu_mask, y, relu, M, C);
}

void CudaBackend::batchnorm_backward(float* dx, float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                     const uint8_t* relu_mask, const float* x, const float* gamma, const float* mean,
                                     const float* invstd, bool relu, bool train, int M, int C) {
  check_rows(M, C, "batchnorm_backward");
  check_relu_mask("batchnorm_backward", relu, relu_mask);
  if (M == 0 || C == 0) return;
  ColumnPlan plan = plan_columns(*this, M, C);
  CudaScratch psum_g(*this, sizeof(double) * plan.splits * C);
  CudaScratch psum_gx(*this, sizeof(double) * plan.splits * C);
  CudaScratch coef(*this, sizeof(float) * 3 * C);
  const uint8_t* mask = relu ? relu_mask : nullptr;
  column_partials_kernel<<<plan.grid, dim3(32, kColLanes), 0, stream_>>>(kBackward, x, nullptr, mean, dy, mask, M, C,
                                                                         plan.rows_per_split, psum_g.as<double>(),
                                                                         psum_gx.as<double>());
  MVEB_CUDA_LAUNCH_CHECK("column_partials_kernel");
  bn_backward_finalize_kernel<<<ceil_div_u(C, 256), 256, 0, stream_>>>(coef.as<float>(), dgamma, dbeta,
                                                                       psum_g.as<double>(), psum_gx.as<double>(),
                                                                       plan.splits, gamma, invstd, train ? 1 : 0, M, C);
  MVEB_CUDA_LAUNCH_CHECK("bn_backward_finalize_kernel");
  size_t total = static_cast<size_t>(M) * C;
  bn_backward_apply_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(dx, dresidual, dy, mask, x, mean,
                                                                           coef.as<float>(), total, C);
  MVEB_CUDA_LAUNCH_CHECK("bn_backward_apply_kernel");
}

void CudaBackend::sum_rows(float* dbias, const float* dy, int M, int N) {
  check_nonnegative("sum_rows", "M", M);
  check_nonnegative("sum_rows", "N", N);
  if (M == 0 || N == 0) return;
  ColumnPlan plan = plan_columns(*this, M, N);
  CudaScratch partial(*this, sizeof(double) * plan.splits * N);
  column_partials_kernel<<<plan.grid, dim3(32, kColLanes), 0, stream_>>>(
      kSum, dy, nullptr, nullptr, nullptr, nullptr, M, N, plan.rows_per_split, partial.as<double>(), nullptr);
  MVEB_CUDA_LAUNCH_CHECK("column_partials_kernel");
  add_column_sums_kernel<<<ceil_div_u(N, 256), 256, 0, stream_>>>(dbias, partial.as<double>(), plan.splits, N);
  MVEB_CUDA_LAUNCH_CHECK("add_column_sums_kernel");
}

}  // namespace mveb
