// gemm.cu: fp32 GEMM (all transposes, alpha/beta), the three convolutions as implicit GEMM on
// NHWC/KRSC, and the NCHW <-> NHWC layout transposes, for the CUDA backend (cuda_backend.h).
// Test: `mveb_native_tests cuda:` on a GPU machine (test/native/test_cuda.cpp compares with the CPU).
//
// One kernel template, instantiated 4 times (plain GEMM, conv forward, conv backward-data, conv
// backward-weight); only the operand loaders differ, the convolution operands are gathered on the
// fly (no im2col buffer). Tile 64x64x16, 256 threads, 4x4 outputs per thread, fp32 FMA on SIMT
// cores: about 2x16 FLOP per shared-memory float read, so this runs at a fraction of H200's fp32
// peak (67 TFLOP/s); tensor cores (TF32/BF16) are the next step and would change the accuracy
// budget (engineering.md: TF32 about 1e-3), so the default stays exact fp32.
// Split-K: when the output has fewer tiles than 2 per SM and the reduction is long (the vMF
// Z Z^T, conv weight gradients: K = N*P*Q), blockIdx.z splits the reduction and the partial
// products are atomically added (C is scaled by beta first). Summation order then varies from run
// to run at the 1e-7 level.
#include <cuda_runtime.h>

#include <algorithm>

#include "cpu/kernel_util.h"  // the argument checks, shared with the CPU backend (same messages)
#include "cuda/cuda_backend.h"

namespace mveb {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;

enum GemmMode { kPlain = 0, kConvForward = 1, kConvBackwardData = 2, kConvBackwardWeight = 3 };

struct ConvGeom {
  int N, H, W, C, K, R, S, stride, pad, P, Q;
};

struct GemmArgs {
  int M, N, K;  // C[M,N] (+)= alpha * A[M,K] B[K,N]
  float alpha, beta;
  const float* A;
  long long lda;
  int transA;
  const float* B;
  long long ldb;
  int transB;
  float* C;
  long long ldc;
  int k_chunk;  // reduction range of one blockIdx.z
  int atomic;   // 1: atomicAdd alpha * acc (C already scaled by beta)
  ConvGeom g;
};

// x[n, p*stride - pad + r, q*stride - pad + s, c] for output row m = (n, p, q) and reduction index
// k = (r, s, c); 0 in the padding.
__device__ __forceinline__ float gather_input(const float* __restrict__ x, const ConvGeom& g, int m, int k) {
  int q = m % g.Q;
  int t = m / g.Q;
  int p = t % g.P;
  int n = t / g.P;
  int c = k % g.C;
  t = k / g.C;
  int s = t % g.S;
  int r = t / g.S;
  int h = p * g.stride - g.pad + r;
  int w = q * g.stride - g.pad + s;
  if (h < 0 || h >= g.H || w < 0 || w >= g.W) return 0.f;
  return x[((static_cast<long long>(n) * g.H + h) * g.W + w) * g.C + c];
}

// A(m, k); callers guarantee m < M and k < K.
template <int MODE>
__device__ __forceinline__ float load_a(const GemmArgs& a, int m, int k) {
  if (MODE == kPlain) {
    return a.transA ? a.A[static_cast<long long>(k) * a.lda + m] : a.A[static_cast<long long>(m) * a.lda + k];
  } else if (MODE == kConvForward) {
    return gather_input(a.A, a.g, m, k);
  } else if (MODE == kConvBackwardData) {
    // m = (n, h, w) of dx; k = (r, s, kout); value dy[n, p, q, kout] with h = p*stride - pad + r.
    const ConvGeom& g = a.g;
    int w = m % g.W;
    int t = m / g.W;
    int h = t % g.H;
    int n = t / g.H;
    int ko = k % g.K;
    t = k / g.K;
    int s = t % g.S;
    int r = t / g.S;
    int ph = h + g.pad - r;
    int pw = w + g.pad - s;
    if (ph < 0 || pw < 0 || ph % g.stride != 0 || pw % g.stride != 0) return 0.f;
    int p = ph / g.stride, q = pw / g.stride;
    if (p >= g.P || q >= g.Q) return 0.f;
    return a.A[((static_cast<long long>(n) * g.P + p) * g.Q + q) * g.K + ko];
  } else {
    // backward weight: A(kout, m') = dy[m', kout]
    return a.A[static_cast<long long>(k) * a.g.K + m];
  }
}

// B(k, n); callers guarantee k < K and n < N.
template <int MODE>
__device__ __forceinline__ float load_b(const GemmArgs& a, int k, int n) {
  if (MODE == kPlain) {
    return a.transB ? a.B[static_cast<long long>(n) * a.ldb + k] : a.B[static_cast<long long>(k) * a.ldb + n];
  } else if (MODE == kConvForward) {
    // w[kout = n, (r, s, c) = k]
    return a.B[static_cast<long long>(n) * a.K + k];
  } else if (MODE == kConvBackwardData) {
    // k = (r, s, kout), n = c: w[kout, r, s, c]
    const ConvGeom& g = a.g;
    int ko = k % g.K;
    int t = k / g.K;
    int s = t % g.S;
    int r = t / g.S;
    return a.B[((static_cast<long long>(ko) * g.R + r) * g.S + s) * g.C + n];
  } else {
    // backward weight: B(m', (r, s, c)) = x gathered
    return gather_input(a.B, a.g, k, n);
  }
}

// Which operand dimension is contiguous in memory, so that consecutive threads load consecutive
// addresses: A along k (true) or m; B along n (true) or k.
template <int MODE>
__device__ __forceinline__ bool a_k_contiguous(const GemmArgs& a) {
  return MODE == kPlain ? !a.transA : MODE != kConvBackwardWeight;
}
template <int MODE>
__device__ __forceinline__ bool b_n_contiguous(const GemmArgs& a) {
  return MODE == kPlain ? !a.transB : MODE != kConvForward;
}

template <int MODE>
__global__ void __launch_bounds__(kThreads) gemm_kernel(GemmArgs a) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Bs[kBK][kBN + 1];
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  const int k_begin = blockIdx.z * a.k_chunk;
  const int k_end = min(a.K, k_begin + a.k_chunk);
  const bool ak = a_k_contiguous<MODE>(a), bn = b_n_contiguous<MODE>(a);

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  for (int k0 = k_begin; k0 < k_end; k0 += kBK) {
#pragma unroll
    for (int i = 0; i < (kBM * kBK) / kThreads; ++i) {
      int l = tid + i * kThreads;
      int mm = ak ? l / kBK : l % kBM;
      int kk = ak ? l % kBK : l / kBM;
      int m = m0 + mm, k = k0 + kk;
      As[kk][mm] = (m < a.M && k < k_end) ? load_a<MODE>(a, m, k) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < (kBN * kBK) / kThreads; ++i) {
      int l = tid + i * kThreads;
      int nn = bn ? l % kBN : l / kBK;
      int kk = bn ? l / kBN : l % kBK;
      int n = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = (n < a.N && k < k_end) ? load_b<MODE>(a, k, n) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int m = m0 + ty + 16 * i;
    if (m >= a.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int n = n0 + tx + 16 * j;
      if (n >= a.N) continue;
      float* c = a.C + static_cast<long long>(m) * a.ldc + n;
      float v = a.alpha * acc[i][j];
      if (a.atomic)
        atomicAdd(c, v);
      else if (a.beta == 0.f)
        *c = v;  // assigns even when C holds NaN
      else
        *c = v + a.beta * *c;
    }
  }
}

// C[M,N] (row stride ldc) = beta * C, or 0 when beta == 0.
__global__ void scale_matrix_kernel(float* __restrict__ C, long long ldc, int M, int N, float beta) {
  size_t total = static_cast<size_t>(M) * N;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(blockDim.x) * gridDim.x) {
    float* c = C + static_cast<long long>(i / N) * ldc + static_cast<long long>(i % N);
    *c = beta == 0.f ? 0.f : beta * *c;
  }
}

// src [B, R, Cc] -> dst [B, Cc, R] through a 32x33 shared tile (block 32x8).
__global__ void batched_transpose_kernel(float* __restrict__ dst, const float* __restrict__ src, int B, int R, int Cc) {
  __shared__ float tile[32][33];
  const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
  const long long plane = static_cast<long long>(R) * Cc;
  for (int b = blockIdx.z; b < B; b += gridDim.z) {
    const float* s = src + b * plane;
    float* d = dst + b * plane;
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
      int r = r0 + threadIdx.y + j, c = c0 + threadIdx.x;
      if (r < R && c < Cc) tile[threadIdx.y + j][threadIdx.x] = s[static_cast<long long>(r) * Cc + c];
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
      int c = c0 + threadIdx.y + j, r = r0 + threadIdx.x;
      if (r < R && c < Cc) d[static_cast<long long>(c) * R + r] = tile[threadIdx.x][threadIdx.y + j];
    }
    __syncthreads();
  }
}

template <int MODE>
void launch_gemm(CudaBackend& be, GemmArgs a, bool force_accumulate) {
  if (a.M <= 0 || a.N <= 0) return;
  const long long tiles = static_cast<long long>((a.M + kBM - 1) / kBM) * ((a.N + kBN - 1) / kBN);
  const long long target = 2LL * be.sm_count();
  long long splits = 1;
  if (tiles < target && a.K > 512) {
    splits = (target + tiles - 1) / tiles;
    long long max_splits = (a.K + 255) / 256;  // at least 256 reduction steps per split
    if (splits > max_splits) splits = max_splits;
  }
  long long chunk = (a.K + splits - 1) / splits;
  chunk = (chunk + kBK - 1) / kBK * kBK;
  if (chunk < kBK) chunk = kBK;
  splits = a.K > 0 ? (a.K + chunk - 1) / chunk : 1;
  a.k_chunk = static_cast<int>(chunk);
  a.atomic = 0;
  if (splits > 1) {
    if (!(force_accumulate || a.beta == 1.f)) {
      size_t total = static_cast<size_t>(a.M) * a.N;
      scale_matrix_kernel<<<be.elementwise_blocks(total), 256, 0, be.stream()>>>(a.C, a.ldc, a.M, a.N, a.beta);
      MVEB_CUDA_LAUNCH_CHECK("scale_matrix_kernel");
    }
    a.atomic = 1;
  }
  dim3 grid((a.M + kBM - 1) / kBM, (a.N + kBN - 1) / kBN, static_cast<unsigned>(splits));
  MVEB_CHECK(grid.y <= 65535u, "E_ARG", "gemm: N = ", a.N, " is too large for the CUDA grid (at most ", 65535 * kBN, ")");
  gemm_kernel<MODE><<<grid, kThreads, 0, be.stream()>>>(a);
  MVEB_CUDA_LAUNCH_CHECK("gemm_kernel");
}

GemmArgs conv_args(const ConvShape& s) {
  GemmArgs a{};
  a.g = ConvGeom{s.N, s.H, s.W, s.C, s.K, s.R, s.S, s.stride, s.pad, s.P(), s.Q()};
  a.alpha = 1.f;
  return a;
}

// Same checks and messages as native/cpu/conv.cpp.
void check_conv(const ConvShape& s, const char* op) {
  check_nonnegative(op, "N", s.N);
  check_positive(op, "H", s.H);
  check_positive(op, "W", s.W);
  check_positive(op, "C", s.C);
  check_positive(op, "K", s.K);
  check_positive(op, "R", s.R);
  check_positive(op, "S", s.S);
  check_positive(op, "stride", s.stride);
  check_nonnegative(op, "pad", s.pad);
  MVEB_CHECK(s.P() > 0 && s.Q() > 0, "E_SHAPE", op, ": output size must be > 0, found ", s.P(), "x", s.Q(),
             " for input ", s.H, "x", s.W, " filter ", s.R, "x", s.S, " stride ", s.stride, " pad ", s.pad);
}

void check_dims(const char* op, int N, int C, int H, int W) {
  check_nonnegative(op, "N", N);
  check_nonnegative(op, "C", C);
  check_nonnegative(op, "H", H);
  check_nonnegative(op, "W", W);
}

void transpose(CudaBackend& be, float* dst, const float* src, int B, int R, int Cc) {
  if (B <= 0 || R <= 0 || Cc <= 0) return;
  MVEB_CHECK((R + 31) / 32 <= 65535, "E_ARG", "layout transpose: ", R, " rows is too many for the CUDA grid");
  dim3 grid((Cc + 31) / 32, (R + 31) / 32, B < 65535 ? B : 65535);
  batched_transpose_kernel<<<grid, dim3(32, 8), 0, be.stream()>>>(dst, src, B, R, Cc);
  MVEB_CUDA_LAUNCH_CHECK("batched_transpose_kernel");
}

}  // namespace

void CudaBackend::gemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
                       const float* B, int ldb, float beta, float* C, int ldc) {
  // same checks and messages as native/cpu/gemm.cpp
  check_nonnegative("gemm", "M", M);
  check_nonnegative("gemm", "N", N);
  check_nonnegative("gemm", "K", K);
  const int a_cols = transA ? M : K, b_cols = transB ? K : N;
  MVEB_CHECK(lda >= std::max(1, a_cols), "E_ARG", "gemm: lda must be >= ", std::max(1, a_cols), ", found ", lda);
  MVEB_CHECK(ldb >= std::max(1, b_cols), "E_ARG", "gemm: ldb must be >= ", std::max(1, b_cols), ", found ", ldb);
  MVEB_CHECK(ldc >= std::max(1, N), "E_ARG", "gemm: ldc must be >= ", std::max(1, N), ", found ", ldc);
  GemmArgs a{};
  a.M = M, a.N = N, a.K = K;
  a.alpha = alpha, a.beta = beta;
  a.A = A, a.lda = lda, a.transA = transA ? 1 : 0;
  a.B = B, a.ldb = ldb, a.transB = transB ? 1 : 0;
  a.C = C, a.ldc = ldc;
  launch_gemm<kPlain>(*this, a, false);
}

void CudaBackend::nchw_to_nhwc(float* dst, const float* src, int N, int C, int H, int W) {
  check_dims("nchw_to_nhwc", N, C, H, W);
  transpose(*this, dst, src, N, C, H * W);
}

void CudaBackend::nhwc_to_nchw(float* dst, const float* src, int N, int C, int H, int W) {
  check_dims("nhwc_to_nchw", N, C, H, W);
  transpose(*this, dst, src, N, H * W, C);
}

// y[N*P*Q, K] = im2col(x)[N*P*Q, R*S*C] * w[K, R*S*C]^T
void CudaBackend::conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) {
  check_conv(s, "conv2d_forward");
  GemmArgs a = conv_args(s);
  a.M = s.N * s.P() * s.Q(), a.N = s.K, a.K = s.R * s.S * s.C;
  a.A = x, a.B = w, a.C = y, a.ldc = s.K;
  a.beta = 0.f;
  launch_gemm<kConvForward>(*this, a, false);
}

// dx[N*H*W, C] = gathered dy[N*H*W, (r, s, k)] * w[(r, s, k), C]
void CudaBackend::conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) {
  check_conv(s, "conv2d_backward_data");
  GemmArgs a = conv_args(s);
  a.M = s.N * s.H * s.W, a.N = s.C, a.K = s.R * s.S * s.K;
  a.A = dy, a.B = w, a.C = dx, a.ldc = s.C;
  a.beta = 0.f;
  launch_gemm<kConvBackwardData>(*this, a, false);
}

// dw[K, R*S*C] += dy[N*P*Q, K]^T * im2col(x)[N*P*Q, R*S*C]   (accumulates)
void CudaBackend::conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s) {
  check_conv(s, "conv2d_backward_weight");
  GemmArgs a = conv_args(s);
  a.M = s.K, a.N = s.R * s.S * s.C, a.K = s.N * s.P() * s.Q();
  a.A = dy, a.B = x, a.C = dw, a.ldc = a.N;
  a.beta = 1.f;
  launch_gemm<kConvBackwardWeight>(*this, a, true);
}

}  // namespace mveb
