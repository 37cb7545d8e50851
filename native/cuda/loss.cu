// loss.cu: the MVEB loss pieces of the CUDA backend: row L2 normalisation (forward / backward) and
// the vMF Stein score estimator (mveb-spec.md sections 2.3-2.5; semantics in core/backend.h).
// Test: `mveb_native_tests cuda:` on a GPU machine (test/native/test_cuda.cpp compares with the CPU).
//
// vmf_score: the O(N^2 D) products run on the GPU, the O(N^2) and O(N^3) work on the host in
// float64:
//   GPU   S = Z Z^T                                     (2 N^2 D FLOP: 67 MFLOP at N = 128, D = 2048)
//   host  tau = max(k-th largest of 1 - S, min_width)   (nth_element over the N^2 entries)
//   host  A = exp(S / tau) + eta I, r = rowsum(K), A = L L^T, cond estimate (as the CPU backend),
//         W = -A^{-1} diag(r / tau) from L^{-1}       (~N^3 FLOP: 2 MFLOP at N = 128)
//   GPU   score = W Z = -A^{-1} (Z / tau) r              (2 N^2 D FLOP)
// Why the host for the N x N part: N is the per-GPU batch (128 in the official config, a few
// thousand at most), so the factorisation is tiny next to a handful of launch latencies, and
// float64 keeps it exact with cond(K + eta I) in the hundreds (spec example 2: 409). Cost: S down
// and W up (N^2 floats each, 64 KB at N = 128) and two syncs. The explicit inverse (rounded to fp32
// in W) loses about cond * 6e-8 relative, the same order as the CPU backend's fp32 solve. For N of
// several thousand the host part becomes slow (N = 4096: ~70 GFLOP on one core); a blocked GPU
// Cholesky would then be the next step.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/vmf_condition.h"  // condition_estimate, shared with the CPU backend
#include "core/op_checks.h"  // argument checks shared with the CPU backend
#include "cuda/cuda_backend.h"

namespace mveb {
namespace {

// Block-wide sum of a double (blockDim.x == 256), broadcast to every thread.
__device__ double block_sum_all(double v) {
  __shared__ double warp_sums[8];
  __shared__ double total;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int k = 0; k < 8; ++k) t += warp_sums[k];
    total = t;
  }
  __syncthreads();
  return total;
}

// One block per row: norms[i] = ||x_i||, y_i = x_i / max(||x_i||, eps).
__global__ void l2_normalize_forward_kernel(float* __restrict__ y, float* __restrict__ norms, const float* __restrict__ x,
                                            int D, float eps) {
  const long long row = blockIdx.x;
  const float* xr = x + row * D;
  double s = 0;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    double v = xr[d];
    s += v * v;
  }
  s = block_sum_all(s);
  const double norm_d = sqrt(s);
  const float norm = static_cast<float>(norm_d);
  const float denom = static_cast<float>(norm_d > eps ? norm_d : static_cast<double>(eps));
  float* yr = y + row * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) yr[d] = xr[d] / denom;
  if (threadIdx.x == 0) norms[row] = norm;
}

// As native/cpu/loss_rows.cpp (the exact gradient of y = x / max(||x||, eps)):
//   norm_i > eps: dx_i = (dy_i - y_i (y_i . dy_i)) / norm_i;  otherwise dx_i = dy_i / eps.
__global__ void l2_normalize_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                             const float* __restrict__ y, const float* __restrict__ norms, int D,
                                             float eps) {
  const long long row = blockIdx.x;
  const float* yr = y + row * D;
  const float* dyr = dy + row * D;
  double s = 0;
  for (int d = threadIdx.x; d < D; d += blockDim.x) s += static_cast<double>(yr[d]) * dyr[d];
  const float dot = static_cast<float>(block_sum_all(s));
  const float norm = norms[row];
  float* dxr = dx + row * D;
  if (norm > eps) {
    const float inv = static_cast<float>(1.0 / norm);
    for (int d = threadIdx.x; d < D; d += blockDim.x) dxr[d] = (dyr[d] - yr[d] * dot) * inv;
  } else {
    const float inv = 1.f / eps;
    for (int d = threadIdx.x; d < D; d += blockDim.x) dxr[d] = dyr[d] * inv;
  }
}

}  // namespace

void CudaBackend::l2_normalize_rows_forward(float* y, float* norms, const float* x, int N, int D, float eps) {
  check_nonnegative("l2_normalize_rows_forward", "N", N);
  check_nonnegative("l2_normalize_rows_forward", "D", D);
  if (N == 0) return;
  l2_normalize_forward_kernel<<<N, 256, 0, stream_>>>(y, norms, x, D, eps);
  MVEB_CUDA_LAUNCH_CHECK("l2_normalize_forward_kernel");
}

void CudaBackend::l2_normalize_rows_backward(float* dx, const float* dy, const float* y, const float* norms, int N,
                                             int D, float eps) {
  check_nonnegative("l2_normalize_rows_backward", "N", N);
  check_nonnegative("l2_normalize_rows_backward", "D", D);
  if (N == 0 || D == 0) return;
  l2_normalize_backward_kernel<<<N, 256, 0, stream_>>>(dx, dy, y, norms, D, eps);
  MVEB_CUDA_LAUNCH_CHECK("l2_normalize_backward_kernel");
}

VmfInfo CudaBackend::vmf_score(float* score, const float* z, int N, int D, float eta, float min_width) {
  // argument checks and messages as native/cpu/vmf.cpp
  const char* op = "vmf_score";
  MVEB_CHECK(N >= 2, "E_SHAPE", op, ": needs at least 2 rows (samples), found N = ", N);
  MVEB_CHECK(D >= 1, "E_SHAPE", op, ": needs at least 1 column, found D = ", D);
  MVEB_CHECK(std::isfinite(eta) && eta >= 0, "E_ARG", op, ": eta must be finite and >= 0, found ", eta);
  MVEB_CHECK(std::isfinite(min_width) && min_width > 0, "E_ARG", op, ": minWidth must be finite and > 0, found ",
             min_width);
  MVEB_CHECK(N <= 16384, "E_SHAPE", op, ": N = ", N, " rows is more than the host factorisation handles (16384)");
  const size_t nn = static_cast<size_t>(N) * N, nd = static_cast<size_t>(N) * D;
  if (!all_finite(z, nd)) {  // rare path: find the first bad value for the message
    std::vector<float> Z(nd);
    download(Z.data(), z, nd * sizeof(float));
    for (size_t i = 0; i < nd; ++i)
      if (!std::isfinite(Z[i]))
        throw_error("E_NUMERIC", op, ": z contains a non-finite value (", Z[i], " at row ", i / D, ", column ", i % D,
                    ")");
  }

  // 1. S = Z Z^T on the device, then to the host.
  std::vector<float> S(nn);
  {
    CudaScratch s_dev(*this, nn * sizeof(float));
    gemm(false, true, N, N, D, 1.f, z, D, z, D, 0.f, s_dev.as<float>(), N);
    download(S.data(), s_dev.as<float>(), nn * sizeof(float));
  }

  // 2. Width: tau0 = k-th largest of the N^2 distances 1 - S (diagonal included), k = N^2 / 2.
  VmfInfo info;
  {
    std::vector<float> dist(nn);
    for (size_t i = 0; i < nn; ++i) dist[i] = 1.0f - S[i];
    size_t k = std::max<size_t>(nn / 2, 1);
    std::nth_element(dist.begin(), dist.begin() + (k - 1), dist.end(), std::greater<float>());
    info.width_raw = dist[k - 1];
    info.width = std::max(info.width_raw, min_width);
  }
  const double tau = info.width;

  // 3. A = K + eta I with K = exp(S / tau), r = rowsum(K), in float64.
  std::vector<double> A(nn), r(N);
  for (int i = 0; i < N; ++i) {
    double rowsum = 0;
    for (int j = 0; j < N; ++j) {
      double kij = std::exp(static_cast<double>(S[static_cast<size_t>(i) * N + j]) / tau);
      rowsum += kij;
      A[static_cast<size_t>(i) * N + j] = kij;
    }
    A[static_cast<size_t>(i) * N + i] += eta;
    r[i] = rowsum;
  }

  // 4. Cholesky A = L L^T (row-oriented, L in the lower triangle of A).
  for (int j = 0; j < N; ++j) {
    double* Lj = &A[static_cast<size_t>(j) * N];
    for (int i = 0; i < j; ++i) {  // L[j][i] = (A[j][i] - sum_k L[j][k] L[i][k]) / L[i][i]
      const double* Li = &A[static_cast<size_t>(i) * N];
      double s = Lj[i];
      for (int k = 0; k < i; ++k) s -= Lj[k] * Li[k];
      Lj[i] = s / Li[i];
    }
    double d = Lj[j];
    for (int k = 0; k < j; ++k) d -= Lj[k] * Lj[k];
    MVEB_CHECK(d > 0 && std::isfinite(d), "E_NUMERIC", op, ": K + eta*I is not positive definite in float64 (pivot ",
               j, " = ", d, ", width = ", tau, ", eta = ", eta,
               "); expected finite, well-separated kernel values: is the width too small for exp(1/width) to stay "
               "finite, or eta = 0 with repeated rows?");
    Lj[j] = std::sqrt(d);
  }
  info.condition = condition_estimate(A.data(), N);

  // 5. A^{-1} = L^{-T} L^{-1} (float64, 2N^3/3 FLOP: 1.4 MFLOP at N = 128), then the N x N map
  //    W = -A^{-1} diag(r / tau), so that score = -A^{-1} (Z / tau) r = W Z: one GPU gemm of
  //    2 N^2 D FLOP instead of two host triangular solves over D columns.
  std::vector<double> Linv(nn, 0.0);
  for (int i = 0; i < N; ++i) {  // row i of L^{-1}: Linv[i][j] = -(sum_{k=j}^{i-1} L[i][k] Linv[k][j]) / L[i][i]
    const double* Li = &A[static_cast<size_t>(i) * N];
    double* Xi = &Linv[static_cast<size_t>(i) * N];
    for (int k = 0; k < i; ++k) {
      const double l = Li[k];
      const double* Xk = &Linv[static_cast<size_t>(k) * N];
      for (int j = 0; j <= k; ++j) Xi[j] -= l * Xk[j];
    }
    const double inv = 1.0 / Li[i];
    for (int j = 0; j < i; ++j) Xi[j] *= inv;
    Xi[i] = inv;
  }
  std::vector<double> Ainv(nn, 0.0);  // lower triangle: Ainv[i][j] = sum_{k >= i} Linv[k][i] Linv[k][j], j <= i
  for (int k = 0; k < N; ++k) {
    const double* Xk = &Linv[static_cast<size_t>(k) * N];
    for (int i = 0; i <= k; ++i) {
      const double xi = Xk[i];
      double* Ai = &Ainv[static_cast<size_t>(i) * N];
      for (int j = 0; j <= i; ++j) Ai[j] += xi * Xk[j];
    }
  }
  std::vector<float> W(nn);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      const double a = j <= i ? Ainv[static_cast<size_t>(i) * N + j] : Ainv[static_cast<size_t>(j) * N + i];
      W[static_cast<size_t>(i) * N + j] = static_cast<float>(-a * r[j] / tau);
    }

  // 6. score = W Z on the device.
  {
    CudaScratch w_dev(*this, nn * sizeof(float));
    upload(w_dev.as<float>(), W.data(), nn * sizeof(float));
    gemm(false, false, N, D, N, 1.f, w_dev.as<float>(), N, z, D, 0.f, score, D);
    synchronize();  // W (host) and w_dev must outlive the copy and the gemm
  }
  return info;
}

}  // namespace mveb
