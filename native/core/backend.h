// backend.h: the op table. Core code (models, loss, optimizers) calls every computation through a
// Backend; the CPU backend (native/cpu) and the CUDA backend (native/cuda) implement the same list.
// All pointers are this backend's memory. Layout conventions (one vocabulary, declared once):
//   images/activations NHWC: [N, H, W, C]; conv weights KRSC: [K, R, S, C]; conv output [N, P, Q, K]
//   embeddings / BN rows: [M, C] (BN2d on NHWC is BN over M = N*H*W rows)
//   GEMM is row-major: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
// Each op says whether it ASSIGNS or ACCUMULATES its outputs, and what forward saves for backward.
// A backend that lacks an op throws E_UNSUPPORTED from the default below; a new op is not done
// until both backends have it and a cross-backend test compares them.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace mveb {

struct ConvShape {
  int N, H, W, C;      // input
  int K, R, S;         // output channels, filter height/width
  int stride, pad;     // same in both spatial dims
  int P() const { return (H + 2 * pad - R) / stride + 1; }
  int Q() const { return (W + 2 * pad - S) / stride + 1; }
};

struct PoolShape {
  int N, H, W, C;
  int kernel, stride, pad;
  int P() const { return (H + 2 * pad - kernel) / stride + 1; }
  int Q() const { return (W + 2 * pad - kernel) / stride + 1; }
};

// The ReLU mask of batch norm (Backend::batchnorm_forward_train): one bit per element, rows of
// relu_mask_row_bytes(C) bytes.
inline size_t relu_mask_row_bytes(int C) { return (static_cast<size_t>(C) + 7) / 8; }
inline size_t relu_mask_bytes(int64_t M, int C) { return static_cast<size_t>(M) * relu_mask_row_bytes(C); }

// Result of the vMF Stein score estimator (see native/cpu/vmf.cpp and mveb-spec.md section 2.3).
struct VmfInfo {
  float width = 0;       // tau after clamping
  float width_raw = 0;   // tau before clamping
  double condition = 0;  // estimate of cond(K + eta I) from the Cholesky factor
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // within this backend
  virtual void fill(float* dst, float value, size_t n) = 0;
  virtual void synchronize() = 0;
  // ---- scheduling ----
  // Runs independent pieces of work (each calling ops of this backend on its own buffers, e.g. the
  // forwards of two different models) and returns when all are done; the first exception escaping
  // one of them is rethrown after all have finished. Default: one after the other, in order. The CPU
  // backend runs them side by side, one per pool thread, each with its ops on that thread alone:
  // small ops use two cores better so than one after the other on both (CpuBackend). What each
  // piece computes depends only on the number of pieces and threads, never on timing.
  virtual void run_concurrently(const std::vector<std::function<void()>>& tasks);
  // Live allocations of this backend (thread-safe: tensors are allocated on async workers too).
  MemoryCounter memory() const { return {mem_buffers_.load(), mem_bytes_.load(), mem_peak_.load()}; }
  void memory_allocated(size_t bytes) {
    mem_buffers_ += 1;
    const int64_t now = mem_bytes_ += static_cast<int64_t>(bytes);
    for (int64_t peak = mem_peak_.load(); now > peak && !mem_peak_.compare_exchange_weak(peak, now);) {
    }
  }
  void memory_freed(size_t bytes) {
    mem_buffers_ -= 1;
    mem_bytes_ -= static_cast<int64_t>(bytes);
  }

  // ---- dense ----
  // C = alpha * op(A) op(B) + beta * C (beta = 0 assigns even if C holds NaN).
  virtual void gemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc);

  // ---- layout ----
  virtual void nchw_to_nhwc(float* dst, const float* src, int N, int C, int H, int W);
  virtual void nhwc_to_nchw(float* dst, const float* src, int N, int C, int H, int W);

  // ---- convolution (groups = 1, no bias) ----
  virtual void conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s);           // assigns y
  virtual void conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s);   // assigns dx
  // dx += the same (the residual branches' input gradients). Default: into a temporary, then axpy.
  virtual void conv2d_backward_data_add(float* dx, const float* dy, const float* w, const ConvShape& s);
  virtual void conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s); // ACCUMULATES dw
  // Both backward passes of one convolution: conv2d_backward_weight into dw, and, when dx is not null,
  // conv2d_backward_data (add: conv2d_backward_data_add) into dx, so a backend can read dy once for
  // both. Default: the two ops.
  virtual void conv2d_backward(float* dw, float* dx, const float* dy, const float* x, const float* w,
                               const ConvShape& s, bool add);
  // conv2d_forward that may also compute the statistics of y for the batch norm after it: stats[k] =
  // mean, stats[K + k] = biased variance of output channel k (2 K doubles, backend memory). Returns
  // whether it did (a backend or shape without a fused path returns false, stats untouched).
  // Default: conv2d_forward, false.
  virtual bool conv2d_forward_stats(float* y, double* stats, const float* x, const float* w, const ConvShape& s);

  // ---- batch norm over rows [M, C], fused residual add and ReLU ----
  // train: y = act(gamma * (x - mean) * invstd + beta + residual); mean/invstd from the batch (biased
  // variance), saved into saved_mean/saved_invstd; running_mean/var updated with momentum using the
  // unbiased variance (M/(M-1)). batch_stats (may be null): x's per-channel mean and biased variance
  // as conv2d_forward_stats computed them, used instead of a statistics pass of its own (a backend may
  // also compute its own). residual may be null; act is ReLU when relu. With relu, relu_mask
  // (relu_mask_bytes(M, C) bytes; may be null when no backward follows) receives the ReLU pattern:
  // bit c % 8 of byte m * relu_mask_row_bytes(C) + c / 8 is set iff y[m, c] > 0 (the padding bits of
  // a row's last byte are 0). The backward reads it instead of y: 1 bit instead of 32 per element.
  virtual void batchnorm_forward_train(float* y, uint8_t* relu_mask, float* saved_mean, float* saved_invstd,
                                       float* running_mean, float* running_var, const float* x, const float* gamma,
                                       const float* beta, const float* residual, bool relu, int M, int C,
                                       float momentum, float eps, const double* batch_stats);
  // eval: the same with running statistics; nothing saved.
  virtual void batchnorm_forward_eval(float* y, uint8_t* relu_mask, const float* x, const float* gamma,
                                      const float* beta, const float* running_mean, const float* running_var,
                                      const float* residual, bool relu, int M, int C, float eps);
  // backward of either mode. relu_mask is the forward's ReLU pattern (required when relu), x the
  // forward input. train: mean/invstd are the saved batch statistics and the batch-statistics gradient
  // is used; eval (train = false): mean = running_mean, invstd = 1/sqrt(running_var + eps) and BN is
  // an affine map. Assigns dx and dresidual (may be null; it receives the gradient after the ReLU),
  // ACCUMULATES dgamma and dbeta.
  virtual void batchnorm_backward(float* dx, float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                  const uint8_t* relu_mask, const float* x, const float* gamma, const float* mean,
                                  const float* invstd, bool relu, bool train, int M, int C);
  // The backward of a batch norm and of the convolution that produced its input (forward: conv -> BN),
  // in one call, so a backend can compute the norm's input gradient (the convolution's dy) inside the
  // convolution's backward instead of writing it out and reading it back. The norm's arguments as
  // batchnorm_backward (bn_x its input = the convolution's output, M = N P Q rows, C = s.K channels),
  // the convolution's as conv2d_backward. scratch: M x s.K floats for the norm's input gradient where
  // a backend writes it out (contents undefined after the call). dx may be dy's buffer (dy is then
  // consumed before dx is written) but must not overlap dresidual or bn_x. Default:
  // batchnorm_backward into scratch, then conv2d_backward from it.
  virtual void batchnorm_conv_backward(float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                       const uint8_t* relu_mask, const float* bn_x, const float* gamma,
                                       const float* mean, const float* invstd, bool relu, bool train, float* dw,
                                       float* dx, const float* x, const float* w, const ConvShape& s, bool add,
                                       float* scratch);

  // ---- elementwise / pooling / linear helpers ----
  virtual void relu_forward(float* y, const float* x, size_t n);                      // assigns
  virtual void relu_backward(float* dx, const float* dy, const float* y, size_t n);   // assigns
  virtual void add(float* y, const float* a, const float* b, size_t n);               // y = a + b
  virtual void axpy(float* y, float alpha, const float* x, size_t n);                 // y += alpha x
  virtual void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s);  // assigns; argmax = input index
  virtual void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s);  // assigns dx
  virtual void global_avgpool_forward(float* y, const float* x, int N, int HW, int C);   // [N,HW,C] -> [N,C], assigns
  virtual void global_avgpool_backward(float* dx, const float* dy, int N, int HW, int C);  // assigns
  virtual void add_bias_rows(float* y, const float* bias, int M, int N);    // y[m,n] += bias[n]
  virtual void sum_rows(float* dbias, const float* dy, int M, int N);       // dbias[n] += sum_m dy[m,n] (ACCUMULATES)

  // ---- optimisers, on flat arenas (n floats) ----
  // SGD with momentum (PyTorch semantics): g = grad + wd * p; buf = momentum * buf + g; p -= lr * buf.
  virtual void sgd_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                        float weight_decay);
  // LARS as the official code (mveb-spec.md section 4): for one parameter tensor of n values,
  // g = grad + wd * p; if adapt: g *= trust * ||p|| / ||g|| when both norms > 0; buf = momentum * buf + g;
  // p -= lr * buf. (wd = 0 and adapt = false for biases and BN parameters.)
  virtual void lars_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                         float weight_decay, float trust, bool adapt);
  // lars_step on every tensor of an arena in one call (a model's optimiser step): tensor i holds
  // values [offset, offset + numel); with adapt, weight_decay and the trust ratio apply, else neither.
  // Default: lars_step per tensor.
  struct LarsTensor {
    size_t offset, numel;
    bool adapt;
  };
  virtual void lars_step_tensors(float* param, float* momentum_buffer, const float* grad,
                                 const std::vector<LarsTensor>& tensors, float lr, float momentum, float weight_decay,
                                 float trust);
  // target = m * target + (1 - m) * online
  virtual void ema_update(float* target, const float* online, size_t n, float m);
  // true when all n values are finite
  virtual bool all_finite(const float* x, size_t n);
  virtual double sum_squares(const float* x, size_t n);

  // ---- MVEB loss pieces ----
  // y[i] = x[i] / max(||x[i]||, eps); saves norms[i] = ||x[i]||.
  virtual void l2_normalize_rows_forward(float* y, float* norms, const float* x, int N, int D, float eps);
  // dx = (dy - y (y . dy)) / max(norm, eps)   (assigns)
  virtual void l2_normalize_rows_backward(float* dx, const float* dy, const float* y, const float* norms, int N, int D,
                                          float eps);
  // score[N,D] = -(K + eta I)^-1 (z / tau) rowsum(K), K = exp(z z^T / tau), tau = max(kth largest of 1 - z z^T, min_width).
  // workspace is allocated internally.
  virtual VmfInfo vmf_score(float* score, const float* z, int N, int D, float eta, float min_width);

 protected:
  [[noreturn]] void unsupported(const char* op) const;
  std::atomic<int64_t> mem_buffers_{0}, mem_bytes_{0}, mem_peak_{0};
};

// What `mveb doctor` / backends() report about CUDA. Never throws; without a GPU or driver,
// available = false and reason says exactly why.
struct CudaInfo {
  bool compiled = false;
  bool available = false;
  std::string reason;          // why not available (empty when available)
  std::string archs;           // architectures compiled for, e.g. "90"
  int driver_version = 0;      // e.g. 13000 (0 when no driver)
  int runtime_version = 0;
  int device_count = 0;
  std::string device_name;
  int cc_major = 0, cc_minor = 0;
  size_t total_memory = 0, free_memory = 0;
};
CudaInfo cuda_query_info();

// The CPU backend with `threads` pool threads (<= 0: default_thread_count()).
class CpuBackend;
Backend* cpu_backend_create(int threads);

// The CUDA backend, or nullptr with *reason set (not compiled, no driver, no device, ...).
Backend* cuda_backend_create(std::string* reason);

}  // namespace mveb
