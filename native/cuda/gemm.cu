// gemm.cu: fp32 GEMM (all transposes, alpha/beta), the three convolutions as implicit GEMM on
// NHWC/KRSC, and the NCHW <-> NHWC layout transposes, for the CUDA backend (cuda_backend.h).
// Test: `mveb_native_tests cuda:` on a GPU machine (test/native/test_cuda.cpp compares with the CPU).
//
// One kernel template for the 4 problems (plain GEMM, conv forward, conv backward-data, conv
// backward-weight); only the operand loaders differ, the convolution operands are gathered on the
// fly (no im2col buffer). Tiles 64 or 128 per side (4 shapes), x16 deep, 256 threads, 4x4 to 8x8
// outputs per thread, fp32 FMA on SIMT cores: 16 instantiations in all. The 8x8 shape does 64 FMAs
// per 16 shared-memory floats (4 float4 reads); H200's fp32 SIMT peak is ~67 TFLOP/s. Tensor cores
// (TF32/BF16) are the next step and would change the accuracy budget (engineering.md: TF32 about
// 1e-3), so the default stays exact fp32. Not yet timed on a GPU (benchmarks/device/bench_cuda.cpp).
// Split-K: when the output has fewer tiles than 2 per SM and the reduction is long (the vMF
// Z Z^T, conv weight gradients: K = N*P*Q), blockIdx.z splits the reduction and the partial
// products are atomically added (C is scaled by beta first). Summation order then varies from run
// to run at the 1e-7 level.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/op_checks.h"  // the argument checks, shared with the CPU backend (same messages)
#include "cuda/cuda_backend.h"

namespace mveb {
namespace {

constexpr int kBK = 16, kThreads = 256;

enum GemmMode { kPlain = 0, kConvForward = 1, kConvBackwardData = 2, kConvBackwardWeight = 3 };

// x / d for 0 <= x < 2^31 as a multiply-high and a shift (the divisors are fixed per launch, so
// the gathers below avoid ~20-instruction integer divisions). d = 1 passes x through. Exhaustively
// checked on the host against x / d for d up to 5000 and spot-checked up to 2^31 - 1.
struct FastDiv {
  int d = 1;
  unsigned mul = 0, shift = 0;
};
FastDiv make_fastdiv(int d) {
  FastDiv f;
  f.d = d;
  if (d != 1) {
    unsigned lg = 0;
    while ((1ull << lg) < static_cast<unsigned long long>(d)) ++lg;  // ceil(log2 d)
    const unsigned p = 31 + lg;
    f.mul = static_cast<unsigned>(((1ull << p) + static_cast<unsigned>(d) - 1) / static_cast<unsigned>(d));
    f.shift = p - 32;
  }
  return f;
}
__device__ __forceinline__ int fdiv(const FastDiv& f, int x) {
  return f.d != 1 ? static_cast<int>(__umulhi(static_cast<unsigned>(x), f.mul) >> f.shift) : x;
}
// q = x / d, returns x % d
__device__ __forceinline__ int fdivmod(const FastDiv& f, int x, int* q) {
  *q = fdiv(f, x);
  return x - *q * f.d;
}

struct ConvGeom {
  int N, H, W, C, K, R, S, stride, pad, P, Q;
  FastDiv div_H, div_W, div_C, div_K, div_S, div_P, div_Q, div_stride;
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
  int t, n, r;
  const int q = fdivmod(g.div_Q, m, &t);
  const int p = fdivmod(g.div_P, t, &n);
  const int c = fdivmod(g.div_C, k, &t);
  const int s = fdivmod(g.div_S, t, &r);
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
    int t, n, r;
    const int w = fdivmod(g.div_W, m, &t);
    const int h = fdivmod(g.div_H, t, &n);
    const int ko = fdivmod(g.div_K, k, &t);
    const int s = fdivmod(g.div_S, t, &r);
    const int ph = h + g.pad - r;
    const int pw = w + g.pad - s;
    if (ph < 0 || pw < 0) return 0.f;
    int p, q;
    if (fdivmod(g.div_stride, ph, &p) != 0 || fdivmod(g.div_stride, pw, &q) != 0) return 0.f;
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
    int t, r;
    const int ko = fdivmod(g.div_K, k, &t);
    const int s = fdivmod(g.div_S, t, &r);
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

// Block tile BM x BN = (16 TM) x (16 TN), 256 threads as 16 x 16; each thread owns TM x TN outputs
// in groups of 4 rows / 4 columns spaced 64 apart (rows g*64 + ty*4 + e), so its shared-memory
// operands are float4 reads without bank conflicts. K steps of kBK = 16; shared memory is double
// buffered and the next tile's global loads are issued before the current tile's FMAs (one
// __syncthreads per step). Per step a thread does TM*TN*16 FMAs for (TM+TN)*4 float4 reads.
template <int MODE, int TM, int TN>
__global__ void __launch_bounds__(kThreads) gemm_kernel(GemmArgs a) {
  constexpr int BM = 16 * TM, BN = 16 * TN;
  constexpr int LA = BM * kBK / kThreads, LB = BN * kBK / kThreads;  // global loads per thread and step
  __shared__ __align__(16) float As[2][kBK][BM + 4];
  __shared__ __align__(16) float Bs[2][kBK][BN + 4];
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int k_begin = blockIdx.z * a.k_chunk;
  const int k_end = min(a.K, k_begin + a.k_chunk);
  const bool ak = a_k_contiguous<MODE>(a), bn = b_n_contiguous<MODE>(a);

  float ra[LA], rb[LB];
  auto load_global = [&](int k0) {
#pragma unroll
    for (int i = 0; i < LA; ++i) {
      int l = tid + i * kThreads;
      int mm = ak ? l / kBK : l % BM;
      int kk = ak ? l % kBK : l / BM;
      int m = m0 + mm, k = k0 + kk;
      ra[i] = (m < a.M && k < k_end) ? load_a<MODE>(a, m, k) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < LB; ++i) {
      int l = tid + i * kThreads;
      int nn = bn ? l % BN : l / kBK;
      int kk = bn ? l / BN : l % kBK;
      int n = n0 + nn, k = k0 + kk;
      rb[i] = (n < a.N && k < k_end) ? load_b<MODE>(a, k, n) : 0.f;
    }
  };
  auto store_shared = [&](int buf) {
#pragma unroll
    for (int i = 0; i < LA; ++i) {
      int l = tid + i * kThreads;
      int mm = ak ? l / kBK : l % BM;
      int kk = ak ? l % kBK : l / BM;
      As[buf][kk][mm] = ra[i];
    }
#pragma unroll
    for (int i = 0; i < LB; ++i) {
      int l = tid + i * kThreads;
      int nn = bn ? l % BN : l / kBK;
      int kk = bn ? l / BN : l % kBK;
      Bs[buf][kk][nn] = rb[i];
    }
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  if (k_begin < k_end) {
    load_global(k_begin);
    store_shared(0);
  }
  __syncthreads();
  int buf = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += kBK) {
    const bool more = k0 + kBK < k_end;
    if (more) load_global(k0 + kBK);  // in flight during the FMAs below
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[TM], bv[TN];
#pragma unroll
      for (int g = 0; g < TM / 4; ++g) {
        float4 v = *reinterpret_cast<const float4*>(&As[buf][kk][g * 64 + ty * 4]);
        av[g * 4 + 0] = v.x, av[g * 4 + 1] = v.y, av[g * 4 + 2] = v.z, av[g * 4 + 3] = v.w;
      }
#pragma unroll
      for (int g = 0; g < TN / 4; ++g) {
        float4 v = *reinterpret_cast<const float4*>(&Bs[buf][kk][g * 64 + tx * 4]);
        bv[g * 4 + 0] = v.x, bv[g * 4 + 1] = v.y, bv[g * 4 + 2] = v.z, bv[g * 4 + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    if (more) store_shared(buf ^ 1);  // the other buffer: nobody reads it in this step
    __syncthreads();
    buf ^= 1;
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + (i / 4) * 64 + ty * 4 + (i % 4);
    if (m >= a.M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + (j / 4) * 64 + tx * 4 + (j % 4);
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

template <int MODE, int TM, int TN>
void launch_tiles(CudaBackend& be, const GemmArgs& a, unsigned splits) {
  constexpr int BM = 16 * TM, BN = 16 * TN;
  dim3 grid((a.M + BM - 1) / BM, (a.N + BN - 1) / BN, splits);
  MVEB_CHECK(grid.y <= 65535u, "E_ARG", "gemm: N = ", a.N, " is too large for the CUDA grid (at most ", 65535 * BN, ")");
  gemm_kernel<MODE, TM, TN><<<grid, kThreads, 0, be.stream()>>>(a);
  MVEB_CUDA_LAUNCH_CHECK("gemm_kernel");
}

long long tile_count(const GemmArgs& a, int tm, int tn) {
  return static_cast<long long>((a.M + 16 * tm - 1) / (16 * tm)) * ((a.N + 16 * tn - 1) / (16 * tn));
}

template <int MODE>
void launch_gemm(CudaBackend& be, GemmArgs a, bool force_accumulate) {
  if (a.M <= 0 || a.N <= 0) return;
  // Tile shape: 128-wide in a dimension that has >= 128, unless the bigger tiles leave SMs idle
  // (then the smaller ones give more blocks); split-K below covers what is still too few.
  int tm = a.M >= 128 ? 8 : 4, tn = a.N >= 128 ? 8 : 4;
  const long long sms = be.sm_count();
  if (tm == 8 && tn == 8 && tile_count(a, 8, 8) < sms) (a.M >= a.N ? tn : tm) = 4;
  if ((tm == 8 || tn == 8) && tile_count(a, tm, tn) < sms) tm = tn = 4;
  const long long tiles = tile_count(a, tm, tn);
  const long long target = 2 * sms;
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
  const unsigned z = static_cast<unsigned>(splits);
  if (tm == 8 && tn == 8)
    launch_tiles<MODE, 8, 8>(be, a, z);
  else if (tm == 8)
    launch_tiles<MODE, 8, 4>(be, a, z);
  else if (tn == 8)
    launch_tiles<MODE, 4, 8>(be, a, z);
  else
    launch_tiles<MODE, 4, 4>(be, a, z);
}

GemmArgs conv_args(const ConvShape& s) {  // (is_pointwise below: 1x1 convolutions are plain GEMMs)
  GemmArgs a{};
  a.g = ConvGeom{s.N, s.H, s.W, s.C, s.K, s.R, s.S, s.stride, s.pad, s.P(), s.Q(), {}, {}, {}, {}, {}, {}, {}, {}};
  a.g.div_H = make_fastdiv(s.H), a.g.div_W = make_fastdiv(s.W), a.g.div_C = make_fastdiv(s.C);
  a.g.div_K = make_fastdiv(s.K), a.g.div_S = make_fastdiv(s.S), a.g.div_P = make_fastdiv(s.P());
  a.g.div_Q = make_fastdiv(s.Q()), a.g.div_stride = make_fastdiv(s.stride);
  a.alpha = 1.f;
  return a;
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
  check_gemm_args(transA, transB, M, N, K, lda, ldb, ldc);
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

// 1x1, stride 1, no padding (most of ResNet-50's convolutions): x is already the [N*H*W, C]
// operand, so the three convolutions are plain GEMMs without the gather arithmetic.
static bool is_pointwise(const ConvShape& s) { return s.R == 1 && s.S == 1 && s.stride == 1 && s.pad == 0; }

// y[N*P*Q, K] = im2col(x)[N*P*Q, R*S*C] * w[K, R*S*C]^T
void CudaBackend::conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) {
  check_conv_shape("conv2d_forward", s);
  if (is_pointwise(s)) return gemm(false, true, s.N * s.H * s.W, s.K, s.C, 1.f, x, s.C, w, s.C, 0.f, y, s.K);
  GemmArgs a = conv_args(s);
  a.M = s.N * s.P() * s.Q(), a.N = s.K, a.K = s.R * s.S * s.C;
  a.A = x, a.B = w, a.C = y, a.ldc = s.K;
  a.beta = 0.f;
  launch_gemm<kConvForward>(*this, a, false);
}

// dx[N*H*W, C] = gathered dy[N*H*W, (r, s, k)] * w[(r, s, k), C]
void CudaBackend::conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) {
  check_conv_shape("conv2d_backward_data", s);
  if (is_pointwise(s)) return gemm(false, false, s.N * s.H * s.W, s.C, s.K, 1.f, dy, s.K, w, s.C, 0.f, dx, s.C);
  GemmArgs a = conv_args(s);
  a.M = s.N * s.H * s.W, a.N = s.C, a.K = s.R * s.S * s.K;
  a.A = dy, a.B = w, a.C = dx, a.ldc = s.C;
  a.beta = 0.f;
  launch_gemm<kConvBackwardData>(*this, a, false);
}

// dw[K, R*S*C] += dy[N*P*Q, K]^T * im2col(x)[N*P*Q, R*S*C]   (accumulates)
void CudaBackend::conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s) {
  check_conv_shape("conv2d_backward_weight", s);
  if (is_pointwise(s)) return gemm(true, false, s.K, s.C, s.N * s.H * s.W, 1.f, dy, s.K, x, s.C, 1.f, dw, s.C);
  GemmArgs a = conv_args(s);
  a.M = s.K, a.N = s.R * s.S * s.C, a.K = s.N * s.P() * s.Q();
  a.A = dy, a.B = x, a.C = dw, a.ldc = a.N;
  a.beta = 1.f;
  launch_gemm<kConvBackwardWeight>(*this, a, true);
}

}  // namespace mveb
