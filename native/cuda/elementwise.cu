// elementwise.cu: relu, add, axpy, max / global-average pooling, bias rows, the optimiser steps
// (SGD, LARS, EMA) and the whole-array reductions (all_finite, sum_squares) of the CUDA backend.
// Test: `mveb_native_tests cuda:` on a GPU machine (test/native/test_cuda.cpp compares with the CPU).
// All memory-bound: grid-stride loops, 256 threads, at most 16 blocks per SM. Reductions are
// two-stage with a grid that depends only on n (deterministic), accumulated in double.
// LARS reads its norms from device memory, so an optimiser step never waits for the host.
#include <cuda_runtime.h>

#include <cmath>

#include "core/op_checks.h"  // argument checks shared with the CPU backend
#include "cuda/cuda_backend.h"

namespace mveb {
namespace {

#define MVEB_GRID_STRIDE(i, n)                                                           \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<size_t>(blockDim.x) * gridDim.x)

// Elementwise kernels take no __restrict__ where callers may run them in place (y == x, dx == dy).
__global__ void relu_forward_kernel(float* y, const float* x, size_t n) {
  MVEB_GRID_STRIDE(i, n) {
    float v = x[i];
    y[i] = v > 0.f ? v : 0.f;
  }
}
__global__ void relu_backward_kernel(float* dx, const float* dy, const float* y, size_t n) {
  MVEB_GRID_STRIDE(i, n) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}
// (no __restrict__: y may alias a or b)
__global__ void add_kernel(float* y, const float* a, const float* b, size_t n) {
  MVEB_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}
__global__ void axpy_kernel(float* y, float alpha, const float* x, size_t n) {
  MVEB_GRID_STRIDE(i, n) y[i] = fmaf(alpha, x[i], y[i]);
}

// One thread per output (n, p, q, c); argmax = flat index into x [N, H, W, C]. Padding never wins
// (PyTorch pads with -inf); the first maximum in window order wins ties; a NaN wins (the last one in
// window order, as PyTorch's kernels).
__global__ void maxpool_forward_kernel(float* __restrict__ y, int32_t* __restrict__ argmax, const float* __restrict__ x,
                                       PoolShape s, int P, int Q, size_t total) {
  MVEB_GRID_STRIDE(i, total) {
    int c = static_cast<int>(i % s.C);
    size_t t = i / s.C;
    int q = static_cast<int>(t % Q);
    t /= Q;
    int p = static_cast<int>(t % P);
    int n = static_cast<int>(t / P);
    float best = -INFINITY;
    long long best_idx = -1;
    for (int r = 0; r < s.kernel; ++r) {
      int h = p * s.stride - s.pad + r;
      if (h < 0 || h >= s.H) continue;
      for (int u = 0; u < s.kernel; ++u) {
        int w = q * s.stride - s.pad + u;
        if (w < 0 || w >= s.W) continue;
        long long idx = ((static_cast<long long>(n) * s.H + h) * s.W + w) * s.C + c;
        float v = x[idx];
        if (best_idx < 0 || v > best || v != v) {
          best = v;
          best_idx = idx;
        }
      }
    }
    y[i] = best;
    argmax[i] = static_cast<int32_t>(best_idx);
  }
}

// Gather form (deterministic, assigns every dx): input (n, h, w, c) sums dy over the outputs whose
// window covers it and whose argmax is this input.
__global__ void maxpool_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                        const int32_t* __restrict__ argmax, PoolShape s, int P, int Q, size_t total) {
  MVEB_GRID_STRIDE(i, total) {
    int c = static_cast<int>(i % s.C);
    size_t t = i / s.C;
    int w = static_cast<int>(t % s.W);
    t /= s.W;
    int h = static_cast<int>(t % s.H);
    int n = static_cast<int>(t / s.H);
    // outputs p with p*stride - pad <= h <= p*stride - pad + kernel - 1
    int hp = h + s.pad, wp = w + s.pad;
    int p_lo = hp - s.kernel + 1 <= 0 ? 0 : (hp - s.kernel + 1 + s.stride - 1) / s.stride;
    int p_hi = min(P - 1, hp / s.stride);
    int q_lo = wp - s.kernel + 1 <= 0 ? 0 : (wp - s.kernel + 1 + s.stride - 1) / s.stride;
    int q_hi = min(Q - 1, wp / s.stride);
    float acc = 0.f;
    for (int p = p_lo; p <= p_hi; ++p)
      for (int q = q_lo; q <= q_hi; ++q) {
        long long o = ((static_cast<long long>(n) * P + p) * Q + q) * s.C + c;
        if (argmax[o] == static_cast<int32_t>(i)) acc += dy[o];
      }
    dx[i] = acc;
  }
}

// [N, HW, C] -> [N, C]: block (32 channels x 8 lanes) per (channel block, image).
__global__ void global_avgpool_forward_kernel(float* __restrict__ y, const float* __restrict__ x, int N, int HW, int C) {
  __shared__ double sh[8][32];
  int c = blockIdx.x * 32 + threadIdx.x;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    double s = 0;
    if (c < C) {
      const float* xn = x + static_cast<long long>(n) * HW * C;
      for (int k = threadIdx.y; k < HW; k += 8) s += xn[static_cast<long long>(k) * C + c];
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
      double t = 0;
      for (int l = 0; l < 8; ++l) t += sh[l][threadIdx.x];
      y[static_cast<long long>(n) * C + c] = static_cast<float>(t / HW);
    }
    __syncthreads();
  }
}
__global__ void global_avgpool_backward_kernel(float* dx, const float* dy, int HW, int C,
                                               size_t total) {
  const float inv = 1.0f / HW;
  MVEB_GRID_STRIDE(i, total) {
    size_t c = i % C;
    size_t n = i / (static_cast<size_t>(HW) * C);
    dx[i] = dy[n * C + c] * inv;
  }
}

__global__ void add_bias_rows_kernel(float* y, const float* bias, int N, size_t total) {
  MVEB_GRID_STRIDE(i, total) y[i] += bias[i % N];
}

// PyTorch SGD: g = grad + wd p; buf = momentum buf + g; p -= lr buf.
__global__ void sgd_kernel(float* __restrict__ p, float* __restrict__ buf, const float* __restrict__ grad, size_t n,
                           float lr, float momentum, float wd) {
  MVEB_GRID_STRIDE(i, n) {
    float g = grad[i] + wd * p[i];
    float b = momentum * buf[i] + g;
    buf[i] = b;
    p[i] = p[i] - lr * b;
  }
}

// LARS (mveb-spec.md section 4): g = grad + wd p; q = trust ||p|| / ||g|| when adapt and both > 0,
// else 1; buf = momentum buf + q g; p -= lr buf. sums = {||p||^2, ||g||^2} on the device.
__global__ void lars_kernel(float* __restrict__ p, float* __restrict__ buf, const float* __restrict__ grad, size_t n,
                            float lr, float momentum, float wd, float trust, int adapt, const double* __restrict__ sums) {
  float q = 1.f;
  if (adapt) {
    double pn = sqrt(sums[0]), gn = sqrt(sums[1]);
    if (pn > 0 && gn > 0) q = static_cast<float>(static_cast<double>(trust) * pn / gn);
  }
  MVEB_GRID_STRIDE(i, n) {
    float g = (grad[i] + wd * p[i]) * q;
    float b = momentum * buf[i] + g;
    buf[i] = b;
    p[i] = p[i] - lr * b;
  }
}

__global__ void ema_kernel(float* __restrict__ target, const float* __restrict__ online, size_t n, float m) {
  const float one_minus = 1.f - m;
  MVEB_GRID_STRIDE(i, n) target[i] = m * target[i] + one_minus * online[i];
}

__global__ void nonfinite_kernel(int* __restrict__ found, const float* __restrict__ x, size_t n) {
  bool bad = false;
  MVEB_GRID_STRIDE(i, n) bad |= !isfinite(x[i]);
  if (bad) *found = 1;  // benign race: every writer writes 1
}

// Block-wide sum of a double (blockDim.x == 256); the result is valid in thread 0.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[8];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double t = 0;
  if (threadIdx.x == 0)
    for (int k = 0; k < 8; ++k) t += warp_sums[k];
  return t;
}

// Stage 1: partial[block] = sum a^2 (and partial2[block] = sum (b + wd a)^2 when b is given).
__global__ void sumsq_partials_kernel(double* __restrict__ partial, double* __restrict__ partial2,
                                      const float* __restrict__ a, const float* __restrict__ b, float wd, size_t n) {
  double s1 = 0, s2 = 0;
  MVEB_GRID_STRIDE(i, n) {
    double v = a[i];
    s1 += v * v;
    if (b) {
      double g = static_cast<double>(b[i]) + static_cast<double>(wd) * v;  // as the CPU: in double
      s2 += g * g;
    }
  }
  s1 = block_sum(s1);
  if (threadIdx.x == 0) partial[blockIdx.x] = s1;
  if (b) {
    s2 = block_sum(s2);
    if (threadIdx.x == 0) partial2[blockIdx.x] = s2;
  }
}
// Stage 2 (one block): out[0] = sum partial, out[1] = sum partial2 (when given).
__global__ void sumsq_final_kernel(double* __restrict__ out, const double* __restrict__ partial,
                                   const double* __restrict__ partial2, int count) {
  double s1 = 0, s2 = 0;
  for (int k = threadIdx.x; k < count; k += blockDim.x) {
    s1 += partial[k];
    if (partial2) s2 += partial2[k];
  }
  s1 = block_sum(s1);
  if (threadIdx.x == 0) out[0] = s1;
  if (partial2) {
    s2 = block_sum(s2);
    if (threadIdx.x == 0) out[1] = s2;
  }
}

unsigned reduction_blocks(size_t n) {
  size_t b = (n + 4095) / 4096;  // >= 16 values per thread
  if (b > 1024) b = 1024;
  return b == 0 ? 1u : static_cast<unsigned>(b);
}


}  // namespace

void CudaBackend::relu_forward(float* y, const float* x, size_t n) {
  if (!n) return;
  relu_forward_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(y, x, n);
  MVEB_CUDA_LAUNCH_CHECK("relu_forward_kernel");
}

void CudaBackend::relu_backward(float* dx, const float* dy, const float* y, size_t n) {
  if (!n) return;
  relu_backward_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(dx, dy, y, n);
  MVEB_CUDA_LAUNCH_CHECK("relu_backward_kernel");
}

void CudaBackend::add(float* y, const float* a, const float* b, size_t n) {
  if (!n) return;
  add_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(y, a, b, n);
  MVEB_CUDA_LAUNCH_CHECK("add_kernel");
}

void CudaBackend::axpy(float* y, float alpha, const float* x, size_t n) {
  if (!n) return;
  axpy_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(y, alpha, x, n);
  MVEB_CUDA_LAUNCH_CHECK("axpy_kernel");
}

void CudaBackend::maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s) {
  check_pool_shape("maxpool2d_forward", s);
  size_t total = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
  if (!total) return;
  maxpool_forward_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(y, argmax, x, s, s.P(), s.Q(), total);
  MVEB_CUDA_LAUNCH_CHECK("maxpool_forward_kernel");
}

void CudaBackend::maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s) {
  check_pool_shape("maxpool2d_backward", s);
  size_t total = static_cast<size_t>(s.N) * s.H * s.W * s.C;
  if (!total) return;
  maxpool_backward_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(dx, dy, argmax, s, s.P(), s.Q(), total);
  MVEB_CUDA_LAUNCH_CHECK("maxpool_backward_kernel");
}

void CudaBackend::global_avgpool_forward(float* y, const float* x, int N, int HW, int C) {
  check_nonnegative("global_avgpool_forward", "N", N);
  check_positive("global_avgpool_forward", "HW", HW);
  check_nonnegative("global_avgpool_forward", "C", C);
  if (N == 0 || C == 0) return;
  global_avgpool_forward_kernel<<<dim3((C + 31) / 32, N < 65535 ? N : 65535), dim3(32, 8), 0, stream_>>>(y, x, N, HW, C);
  MVEB_CUDA_LAUNCH_CHECK("global_avgpool_forward_kernel");
}

void CudaBackend::global_avgpool_backward(float* dx, const float* dy, int N, int HW, int C) {
  check_nonnegative("global_avgpool_backward", "N", N);
  check_positive("global_avgpool_backward", "HW", HW);
  check_nonnegative("global_avgpool_backward", "C", C);
  size_t total = static_cast<size_t>(N) * HW * C;
  if (!total) return;
  global_avgpool_backward_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(dx, dy, HW, C, total);
  MVEB_CUDA_LAUNCH_CHECK("global_avgpool_backward_kernel");
}

void CudaBackend::add_bias_rows(float* y, const float* bias, int M, int N) {
  check_nonnegative("add_bias_rows", "M", M);
  check_nonnegative("add_bias_rows", "N", N);
  size_t total = static_cast<size_t>(M) * N;
  if (!total) return;
  add_bias_rows_kernel<<<elementwise_blocks(total), 256, 0, stream_>>>(y, bias, N, total);
  MVEB_CUDA_LAUNCH_CHECK("add_bias_rows_kernel");
}

void CudaBackend::sgd_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                           float weight_decay) {
  if (!n) return;
  sgd_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(param, momentum_buffer, grad, n, lr, momentum, weight_decay);
  MVEB_CUDA_LAUNCH_CHECK("sgd_kernel");
}

void CudaBackend::sum_squares_device(double* out, const float* a, const float* b, float wd, size_t n) {
  unsigned blocks = reduction_blocks(n);
  CudaScratch partial(*this, sizeof(double) * blocks * 2);
  double* p1 = partial.as<double>();
  double* p2 = b ? p1 + blocks : nullptr;
  sumsq_partials_kernel<<<blocks, 256, 0, stream_>>>(p1, p2, a, b, wd, n);
  MVEB_CUDA_LAUNCH_CHECK("sumsq_partials_kernel");
  sumsq_final_kernel<<<1, 256, 0, stream_>>>(out, p1, p2, static_cast<int>(blocks));
  MVEB_CUDA_LAUNCH_CHECK("sumsq_final_kernel");
}

void CudaBackend::lars_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                            float weight_decay, float trust, bool adapt) {
  if (!n) return;
  CudaScratch sums(*this, 2 * sizeof(double));
  if (adapt) sum_squares_device(sums.as<double>(), param, grad, weight_decay, n);
  lars_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(param, momentum_buffer, grad, n, lr, momentum, weight_decay,
                                                          trust, adapt ? 1 : 0, sums.as<double>());
  MVEB_CUDA_LAUNCH_CHECK("lars_kernel");
}

void CudaBackend::ema_update(float* target, const float* online, size_t n, float m) {
  if (!n) return;
  ema_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(target, online, n, m);
  MVEB_CUDA_LAUNCH_CHECK("ema_kernel");
}

bool CudaBackend::all_finite(const float* x, size_t n) {
  if (!n) return true;
  CudaScratch flag(*this, sizeof(int));
  MVEB_CUDA_CHECK(cudaMemsetAsync(flag.as<int>(), 0, sizeof(int), stream_));
  nonfinite_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(flag.as<int>(), x, n);
  MVEB_CUDA_LAUNCH_CHECK("nonfinite_kernel");
  int found = 0;
  download(&found, flag.as<int>(), sizeof(int));
  return found == 0;
}

double CudaBackend::sum_squares(const float* x, size_t n) {
  if (!n) return 0.0;
  CudaScratch out(*this, sizeof(double));
  sum_squares_device(out.as<double>(), x, nullptr, 0.f, n);
  double result = 0;
  download(&result, out.as<double>(), sizeof(double));
  return result;
}

}  // namespace mveb
