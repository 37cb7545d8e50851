// cuda_backend.h: the CUDA implementation of the op table (core/backend.h), shared by the .cu files
// of native/cuda (compiled into the static library mveb_cuda, linked with the static cudart).
// One device (0), one stream, a caching allocator per size class. Every op enqueues on the stream
// and returns; download(), all_finite(), sum_squares() and vmf_score() synchronise.
// Kernels: gemm.cu (tiled fp32 SIMT GEMM, implicit-GEMM convolutions, layouts), batchnorm.cu
// (BN, per-column reductions, sum_rows), elementwise.cu (relu, add, pools, optimisers, reductions),
// loss.cu (l2 normalise, vMF score). Test: build with -DMVEB_CUDA=on and run
// `mveb_native_tests cuda:` on a GPU machine (test/native/test_cuda.cpp compares every op with the
// CPU backend; without a GPU every case is skipped with the reason). See benchmarks/device/.
// Without a GPU, `native/cuda/emu/run.sh` runs the same tests against these kernels under a CPU
// emulation of the CUDA runtime (checks indexing, bounds, tiling and host logic; not GPU execution).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"

namespace mveb {

// Throws mveb::Error("E_CUDA", "<call> failed: <cudaGetErrorString> (<name>) at file:line").
[[noreturn]] void cuda_fail(const char* call, cudaError_t err, const char* file, int line);

#define MVEB_CUDA_CHECK(call)                                                  \
  do {                                                                         \
    cudaError_t mveb_cuda_err_ = (call);                                       \
    if (mveb_cuda_err_ != cudaSuccess) ::mveb::cuda_fail(#call, mveb_cuda_err_, __FILE__, __LINE__); \
  } while (0)
// After every kernel launch: catches bad launch configurations (and earlier asynchronous errors).
#define MVEB_CUDA_LAUNCH_CHECK(kernel_name)                                    \
  do {                                                                         \
    cudaError_t mveb_cuda_err_ = cudaGetLastError();                           \
    if (mveb_cuda_err_ != cudaSuccess) ::mveb::cuda_fail("launch of " kernel_name, mveb_cuda_err_, __FILE__, __LINE__); \
  } while (0)

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::CUDA; }
  std::string name() const override { return "cuda"; }
  cudaStream_t stream() const { return stream_; }
  // The SM count the kernels plan for (the device's, or MVEB_CUDA_SM_COUNT: see the constructor).
  int sm_count() const { return sm_count_; }
  // Grid size for grid-stride elementwise kernels over n items with 256-thread blocks.
  unsigned elementwise_blocks(size_t n) const;

  // ---- memory ----
  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(float* dst, float value, size_t n) override;
  void synchronize() override;

  // ---- dense / layout / convolution (gemm.cu) ----
  void gemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc) override;
  void nchw_to_nhwc(float* dst, const float* src, int N, int C, int H, int W) override;
  void nhwc_to_nchw(float* dst, const float* src, int N, int C, int H, int W) override;
  void conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) override;
  void conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) override;
  void conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s) override;

  // ---- batch norm, column sums (batchnorm.cu) ----
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
  void sum_rows(float* dbias, const float* dy, int M, int N) override;

  // ---- elementwise, pooling, optimisers, reductions (elementwise.cu) ----
  void relu_forward(float* y, const float* x, size_t n) override;
  void relu_backward(float* dx, const float* dy, const float* y, size_t n) override;
  void add(float* y, const float* a, const float* b, size_t n) override;
  void axpy(float* y, float alpha, const float* x, size_t n) override;
  void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolShape& s) override;
  void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolShape& s) override;
  void global_avgpool_forward(float* y, const float* x, int N, int HW, int C) override;
  void global_avgpool_backward(float* dx, const float* dy, int N, int HW, int C) override;
  void add_bias_rows(float* y, const float* bias, int M, int N) override;
  void sgd_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                float weight_decay) override;
  void lars_step(float* param, float* momentum_buffer, const float* grad, size_t n, float lr, float momentum,
                 float weight_decay, float trust, bool adapt) override;
  void ema_update(float* target, const float* online, size_t n, float m) override;
  bool all_finite(const float* x, size_t n) override;
  double sum_squares(const float* x, size_t n) override;

  // ---- MVEB loss pieces (loss.cu) ----
  void l2_normalize_rows_forward(float* y, float* norms, const float* x, int N, int D, float eps) override;
  void l2_normalize_rows_backward(float* dx, const float* dy, const float* y, const float* norms, int N, int D,
                                  float eps) override;
  VmfInfo vmf_score(float* score, const float* z, int N, int D, float eta, float min_width) override;

  // Sum of squares of a (and, when b is given, of b + wd * a) into out[0] (and out[1]), device doubles,
  // deterministic two-stage reduction; nothing is synchronised (elementwise.cu).
  void sum_squares_device(double* out, const float* a, const float* b, float wd, size_t n);

 private:
  void release_cache();  // cudaFree of every cached block (after a synchronise)
  // batch norm's ReLU mask from its output y (batchnorm.cu); nothing when !relu or no mask
  void write_relu_mask(uint8_t* relu_mask, const float* y, bool relu, int M, int C);

  int device_ = 0;
  int sm_count_ = 1;
  cudaStream_t stream_ = nullptr;
  std::mutex alloc_mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;  // size class -> cached device blocks
  size_t cached_bytes_ = 0;
};

// Scratch device memory for one op, from the backend's cache, returned at scope exit. Returning it
// while kernels that use it are still queued is safe: every later user is on the same stream.
class CudaScratch {
 public:
  CudaScratch(CudaBackend& b, size_t bytes) : backend_(b), bytes_(bytes ? bytes : 4), ptr_(b.allocate(bytes_)) {}
  ~CudaScratch() { backend_.deallocate(ptr_, bytes_); }
  CudaScratch(const CudaScratch&) = delete;
  CudaScratch& operator=(const CudaScratch&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  CudaBackend& backend_;
  size_t bytes_;
  void* ptr_;
};

inline unsigned ceil_div_u(size_t a, size_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace mveb
