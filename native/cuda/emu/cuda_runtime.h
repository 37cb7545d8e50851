// cuda_runtime.h (emulation): a CPU stand-in for the parts of the CUDA runtime and the CUDA C++
// kernel dialect that native/cuda uses, so the CUDA backend's kernels run on a machine without a
// GPU. Only for native/cuda/emu/run.sh (which translates the .cu files and builds the cross-backend
// tests against them); never part of the product build. Blocks run one after another; the threads
// of a block are fibers (ucontext) switched at __syncthreads, so shared memory, barriers and
// warp shuffles behave as on the GPU for code without data races. It checks what it can: launch
// configurations (as the GPU does), barrier divergence, and (with AddressSanitizer) every device
// buffer overrun. It does not model warp-synchronous code without explicit sync, memory models, or
// performance.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

// ---- the kernel dialect ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one copy per kernel instantiation = per block (blocks run one at a time)
#define __align__(n) __attribute__((aligned(n)))

struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
namespace emu {
extern dim3 g_thread, g_block, g_block_dim, g_grid_dim;
void syncthreads();
double shuffle_down(double v, int offset);
float atomic_add(float* p, float v);
}  // namespace emu
#define threadIdx (::emu::g_thread)
#define blockIdx (::emu::g_block)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)
inline void __syncthreads() { emu::syncthreads(); }
template <typename T>
inline T __shfl_down_sync(unsigned, T v, int offset) {
  return static_cast<T>(emu::shuffle_down(static_cast<double>(v), offset));
}
inline float atomicAdd(float* p, float v) { return emu::atomic_add(p, v); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }
using std::isfinite;
using std::sqrt;

// ---- the runtime API ----
typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
} cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
#define cudaStreamNonBlocking 0x01
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  size_t totalGlobalMem;
};
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s);

// ---- launches: kernel<<<grid, block, smem, stream>>>(args) becomes
//      emu::launch(grid, block, [&] { kernel(args); }) (native/cuda/emu/translate.py) ----
#include <functional>
namespace emu {
void launch_impl(dim3 grid, dim3 block, const std::function<void()>& body);
template <typename G, typename B, typename F>
void launch(G grid, B block, F&& body) {
  launch_impl(dim3(grid), dim3(block), std::function<void()>(body));
}
}  // namespace emu
