// cpu_backend.h: the CPU implementation of the op table (core/backend.h). Memory is 64-byte aligned
// host memory; kernels run on the backend's ThreadPool and pick AVX-512 / AVX2 / scalar code at run
// time (isa()). The op bodies live in one file per area (gemm.cpp, conv.cpp, batchnorm.cpp,
// elementwise.cpp, optim.cpp, vmf.cpp, ...); this header only declares them.
#pragma once
#include <atomic>
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/threadpool.h"
#include "cpu/cpu_features.h"
#include "cpu/gemm.h"

namespace mveb {

// Precision of the float32 matrix products (GEMM, convolutions through GEMM), as PyTorch's
// torch.set_float32_matmul_precision: Highest = IEEE fp32 products (the default); High = on a CPU
// with AMX, products of at least a few MFLOP (gemm_detail::amx_pays) and the convolutions' pre-packed
// filters run on the AMX tiles in bf16x3 (gemm_amx.cpp: ~2^-17 per product, ~4e-6 relative error on
// a 1024-deep dot product; Winograd F(4x4) and the vMF estimator stay fp32); elsewhere High computes
// what Highest does.
enum class MatmulPrecision { Highest = 0, High = 1 };

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu"; }
  ThreadPool& pool() { return *pool_; }
  // Backend::run_concurrently: task i on pool thread i % threads (tasks sharing a thread run in
  // order), every op inside on its calling thread (nested pool regions run inline), with that
  // thread's set of kept scratch (see kept()). Default pretrain (resnet18 width 0.125, 28x28, b64): two views'
  // backbone forward + backward side by side 35-37 ms against 42-44 ms one after the other on both
  // threads.
  void run_concurrently(const std::vector<std::function<void()>>& tasks) override;
  Isa isa() const { return isa_; }
  const CpuFeatures& features() const { return features_; }
  // Whether the AMX SGEMM can run on this machine (amx_usable; MVEB_ISA below avx512 turns it off).
  bool amx() const { return amx_usable(features_, isa_); }
  // Atomic: set from the JS thread, read by kernels on worker threads (relaxed: any one product sees
  // one value).
  MatmulPrecision matmul_precision() const { return precision_.load(std::memory_order_relaxed); }
  // GEMM scratch of pool thread t for the single-threaded products inside a parallel region (the
  // convolutions' chunks): kept between calls like the top-level GEMM's.
  gemm_detail::Workspace* task_workspace(int t) { return kept().task[static_cast<size_t>(t)].get(); }
  // Buffers of the convolution paths that work in tasks (conv.cpp: the Winograd filter transform, each
  // pool thread's tile buffers and weight-gradient partials in child(t)), kept between calls like the
  // GEMM's: fresh, they page-faulted thousands of times per step (the 16.8 MB transformed C512 K512
  // filter ~3000 times per resnet50 b16 step, the default pretrain encoder's tile buffers ~400 per b64 step).
  gemm_detail::Workspace* conv_task_workspace() { return &kept().conv_task; }
  // The convolutions' packed filters (gemm_detail::PackedB's kept storage; a Winograd convolution's
  // transformed filter matrices in slots 0..35): packed in every call, fresh they page-faulted ~600
  // times per resnet50 b16 step, more after a change of the heap's history.
  gemm_detail::Workspace* filter_workspace() { return &kept().filter; }
  // Each pool thread's staged output chunk (slot t) of a large convolution output with statistics
  // (conv.cpp, output_chunks), kept between calls like the others.
  gemm_detail::Workspace* stage_workspace() { return &kept().stage; }
  // The top-level SGEMM's packing buffers (gemm.cpp), and the patch matrix of the backward-weight GEMM
  // path and conv2d_backward_data_add's temporary (conv.cpp), kept the same way.
  gemm_detail::Workspace* gemm_workspace() { return &kept().gemm; }
  gemm_detail::Workspace* conv_workspace() { return &kept().conv; }
  void set_matmul_precision(MatmulPrecision p) { precision_.store(p, std::memory_order_relaxed); }
  // The SGEMM micro-kernel of isa(), with the AMX path when the precision is High and amx() holds.
  gemm_detail::KernelInfo gemm_kernel() const {
    gemm_detail::KernelInfo k = gemm_detail::kernel_for(isa_);
    k.amx = matmul_precision() == MatmulPrecision::High && amx();
    return k;
  }

  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(float* dst, float value, size_t n) override;
  void synchronize() override {}

  // ==== kernels (gemm.cpp, layout.cpp, conv.cpp, batchnorm.cpp, elementwise.cpp, optim.cpp) ====
  // Lowers the ISA the kernels use (tests run every path on one machine); never raises it above
  // what the CPU supports.
  void force_isa(Isa isa) {
    if (static_cast<int>(isa) <= static_cast<int>(select_isa(features_))) isa_ = isa;
  }
  // Outputs of at least this many bytes (Winograd conv outputs, batch-norm y and dx) are written with
  // non-temporal stores under AVX-512: they do not stay in the caches anyway, and streaming saves the
  // read for ownership of every line. One-thread steps by threshold (none / 16 MiB / 32 MiB):
  // resnet18-cifar b128 1.60 / 1.53 / 1.51 s, resnet50 b16 2.70 / 2.67 / 2.70 s. Tests lower it.
  size_t stream_bytes = size_t(16) << 20;
  // Whether an output of rows x cols floats is that large.
  bool streams(int64_t rows, int cols) const {
    return static_cast<size_t>(rows) * static_cast<size_t>(cols) * sizeof(float) >= stream_bytes;
  }
  void gemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc) override;
  // gemm in IEEE fp32 whatever the matmul precision: the vMF estimator's Cholesky and triangular
  // solves (their condition number would amplify the bf16x3 error: 3.5e-4 at N 1024, D 256).
  void gemm_fp32(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                 int ldb, float beta, float* C, int ldc);
  void nchw_to_nhwc(float* dst, const float* src, int N, int C, int H, int W) override;
  void nhwc_to_nchw(float* dst, const float* src, int N, int C, int H, int W) override;
  void conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) override;
  void conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) override;
  // Pointwise: the GEMM with beta 1; strided with N >= threads: the scatter adds into dx as is; the
  // other paths through a kept temporary and axpy.
  void conv2d_backward_data_add(float* dx, const float* dy, const float* w, const ConvShape& s) override;
  void conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s) override;
  bool conv2d_forward_stats(float* y, double* stats, const float* x, const float* w, const ConvShape& s) override;
  void conv2d_backward(float* dw, float* dx, const float* dy, const float* x, const float* w, const ConvShape& s,
                       bool add) override;
  void batchnorm_conv_backward(float* dresidual, float* dgamma, float* dbeta, const float* dy,
                               const uint8_t* relu_mask, const float* bn_x, const float* gamma, const float* mean,
                               const float* invstd, bool relu, bool train, float* dw, float* dx, const float* x,
                               const float* w, const ConvShape& s, bool add, float* scratch) override;
  void batchnorm_forward_train(float* y, uint8_t* relu_mask, float* saved_mean, float* saved_invstd,
                               float* running_mean, float* running_var, const float* x, const float* gamma,
                               const float* beta, const float* residual, bool relu, int M, int C, float momentum,
                               float eps, const double* batch_stats) override;
  void batchnorm_forward_eval(float* y, uint8_t* relu_mask, const float* x, const float* gamma, const float* beta,
                              const float* running_mean, const float* running_var, const float* residual, bool relu,
                              int M, int C, float eps) override;
  void batchnorm_backward(float* dx, float* dresidual, float* dgamma, float* dbeta, const float* dy,
                          const uint8_t* relu_mask, const float* x, const float* gamma, const float* mean,
                          const float* invstd, bool relu, bool train, int M, int C) override;
  void relu_forward(float* y, const float* x, size_t n) override;
  void relu_backward(float* dx, const float* dy, const float* y, size_t n) override;
  void add(float* y, const float* a, const float* b, size_t n) override;
  void axpy(float* y, float alpha, const float* x, size_t n) override;
  void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s) override;
  void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s) override;
  void global_avgpool_forward(float* y, const float* x, int N, int HW, int C) override;
  void global_avgpool_backward(float* dx, const float* dy, int N, int HW, int C) override;
  void add_bias_rows(float* y, const float* bias, int M, int N) override;
  void sum_rows(float* dbias, const float* dy, int M, int N) override;
  void sgd_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                float weight_decay) override;
  void lars_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                 float weight_decay, float trust, bool adapt) override;
  void lars_step_tensors(float* param, float* momentum_buffer, const float* grad, const std::vector<LarsTensor>& tensors,
                         float lr, float momentum, float weight_decay, float trust) override;
  void ema_update(float* target, const float* online, size_t n, float m) override;
  bool all_finite(const float* x, size_t n) override;
  double sum_squares(const float* x, size_t n) override;

  // ==== MVEB loss pieces (loss_rows.cpp, vmf.cpp) ====
  void l2_normalize_rows_forward(float* y, float* norms, const float* x, int N, int D, float eps) override;
  void l2_normalize_rows_backward(float* dx, const float* dy, const float* y, const float* norms, int N, int D,
                                  float eps) override;
  // fp32 (blocked Cholesky on gemm), falling back to float64 when the factorisation fails or the
  // condition estimate exceeds vmf_float64_condition; E_NUMERIC when that fails too.
  VmfInfo vmf_score(float* score, const float* z, int N, int D, float eta, float min_width) override;
  // The float64 path alone (also the fallback); exposed for tests and benchmarks.
  VmfInfo vmf_score_float64(float* score, const float* z, int N, int D, float eta, float min_width);
  static constexpr double vmf_float64_condition = 1e5;

 private:
  CpuFeatures features_;
  Isa isa_;
  std::atomic<MatmulPrecision> precision_{MatmulPrecision::Highest};
  std::unique_ptr<ThreadPool> pool_;
  // The kernels' scratch kept between calls (the accessors above): no page faults of fresh buffers in
  // every call. One set per lane of run_concurrently (lane 0 outside it): side-by-side tasks sharing
  // one set would find it leased and allocate their own in every call (resnet18-cifar b128 side by
  // side: ~40,000 page faults per step). Each set grows to what its lane's calls need.
  struct KeptScratch {
    gemm_detail::Workspace gemm, conv, conv_task, filter, stage;
    std::vector<std::unique_ptr<gemm_detail::Workspace>> task;  // one per pool thread
  };
  std::vector<std::unique_ptr<KeptScratch>> lanes_;  // one per pool thread, made by the constructor
  // The calling thread's set: its run_concurrently lane, else lane 0.
  KeptScratch& kept();
  void conv_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s, bool add);
  void gemm_with(const gemm_detail::KernelInfo& kernel, bool transA, bool transB, int M, int N, int K, float alpha,
                 const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
};

}  // namespace mveb
