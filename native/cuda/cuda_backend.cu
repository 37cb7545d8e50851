// cuda_backend.cu: construction, memory (caching allocator, copies, fill) and discovery of the CUDA
// backend (cuda_backend_create, cuda_query_info). See cuda_backend.h; tested by
// test/native/test_cuda.cpp (`mveb_native_tests cuda:` on a GPU machine).
#include <cuda_runtime.h>

#include <cstdlib>
#include <sstream>

#include "cuda/cuda_backend.h"

#ifndef MVEB_CUDA_ARCHS_STR
// CMake defines MVEB_CUDA_ARCHS_STR for mveb_core only; here fall back on nvcc's own list
// (e.g. "900"), which names the same architectures.
#define MVEB_CUDA_STRINGIFY2(x) #x
#define MVEB_CUDA_STRINGIFY(x) MVEB_CUDA_STRINGIFY2(x)
#ifdef __CUDA_ARCH_LIST__
#define MVEB_CUDA_ARCHS_STR MVEB_CUDA_STRINGIFY(__CUDA_ARCH_LIST__)
#else
#define MVEB_CUDA_ARCHS_STR "unknown"
#endif
#endif

namespace mveb {

void cuda_fail(const char* call, cudaError_t err, const char* file, int line) {
  throw_error("E_CUDA", call, " failed: ", cudaGetErrorString(err), " (", cudaGetErrorName(err), ") at ", file, ":",
              line);
}

namespace {

// Size classes: 512 B minimum, then 4 classes per power of two (at most 25% rounding waste), so
// the blocks of a training step (same shapes every step) are reused without cudaMalloc/cudaFree
// (cudaFree synchronises the device).
// MVEB_CUDA_EXACT_ALLOC (testing; check.sh sets it for compute-sanitizer memcheck) allocates exact
// sizes instead, so that an overrun inside the rounding is reported too.
size_t size_class(size_t bytes) {
#ifdef MVEB_CUDA_EMU
  return bytes ? bytes : 4;  // CPU emulation (native/cuda/emu): exact sizes, so AddressSanitizer sees every overrun
#endif
  static const bool exact = std::getenv("MVEB_CUDA_EXACT_ALLOC") != nullptr;
  if (exact) return bytes ? bytes : 4;
  if (bytes <= 512) return 512;
  int lg = 63 - __builtin_clzll(static_cast<unsigned long long>(bytes - 1));  // 2^lg < bytes <= 2^(lg+1)
  size_t step = static_cast<size_t>(1) << (lg - 2);
  return (bytes + step - 1) / step * step;
}

__global__ void fill_kernel(float* __restrict__ dst, float value, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(blockDim.x) * gridDim.x)
    dst[i] = value;
}

std::string error_text(cudaError_t e) {
  std::ostringstream os;
  os << cudaGetErrorName(e) << ": " << cudaGetErrorString(e);
  return os.str();
}

// Why CUDA cannot be used, or "" when at least one device is there. *count receives the device count.
std::string probe(int* count, int* driver_version) {
  *count = 0;
  *driver_version = 0;
  cudaDriverGetVersion(driver_version);  // 0 when no driver is installed
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error
    *count = 0;
    if (e == cudaErrorInsufficientDriver && *driver_version == 0)
      return "no NVIDIA driver found (" + error_text(e) + ")";
    if (e == cudaErrorInsufficientDriver) {
      int runtime = 0;
      cudaRuntimeGetVersion(&runtime);
      std::ostringstream os;
      os << "the NVIDIA driver supports CUDA " << *driver_version / 1000 << "." << (*driver_version % 1000) / 10
         << " but this addon was built with CUDA " << runtime / 1000 << "." << (runtime % 1000) / 10
         << "; update the driver (" << error_text(e) << ")";
      return os.str();
    }
    if (e == cudaErrorNoDevice) return "no CUDA device (" + error_text(e) + ")";
    return "cudaGetDeviceCount failed (" + error_text(e) + ")";
  }
  if (*count <= 0) return "no CUDA device";
  return "";
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  MVEB_CUDA_CHECK(cudaSetDevice(device_));
  MVEB_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
  // MVEB_CUDA_SM_COUNT (testing): plan tiles, split-K and row splits as if the GPU had this many SMs,
  // so that the cross-backend tests' small shapes reach the large tiles a 132-SM H200 only picks for
  // large products (benchmarks/device/check.sh runs `cuda:` with it set to 2 as well).
  if (const char* e = std::getenv("MVEB_CUDA_SM_COUNT")) {
    const int n = std::atoi(e);
    if (n >= 1) sm_count_ = n;
  }
  if (sm_count_ < 1) sm_count_ = 1;
  MVEB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

CudaBackend::~CudaBackend() {
  // Never throws: errors at teardown (e.g. the driver already unloading at exit) are ignored.
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto& kv : free_blocks_)
    for (void* p : kv.second) cudaFree(p);
  free_blocks_.clear();
  if (stream_) cudaStreamDestroy(stream_);
  cudaGetLastError();
}

unsigned CudaBackend::elementwise_blocks(size_t n) const {
  size_t blocks = (n + 255) / 256;
  size_t cap = static_cast<size_t>(sm_count_) * 16;  // grid-stride beyond that
  if (blocks > cap) blocks = cap;
  return blocks == 0 ? 1u : static_cast<unsigned>(blocks);
}

void CudaBackend::release_cache() {
  MVEB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (auto& kv : free_blocks_)
    for (void* p : kv.second) MVEB_CUDA_CHECK(cudaFree(p));
  free_blocks_.clear();
  cached_bytes_ = 0;
}

void* CudaBackend::allocate(size_t bytes) {
  size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(alloc_mutex_);
  auto it = free_blocks_.find(cls);
  if (it != free_blocks_.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    cached_bytes_ -= cls;
    return p;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, cls);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    release_cache();  // give the cached blocks back to the driver and try once more
    e = cudaMalloc(&p, cls);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    throw_error("E_CUDA", "cudaMalloc(", cls, " bytes) failed: ", cudaGetErrorString(e), " (", cudaGetErrorName(e),
                "); device memory free ", free_b, " of ", total_b, " bytes, ", memory().bytes,
                " bytes held by tensors");
  }
  return p;
}

void CudaBackend::deallocate(void* p, size_t bytes) {
  if (!p) return;
  size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(alloc_mutex_);
  free_blocks_[cls].push_back(p);
  cached_bytes_ += cls;
}

void CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (!bytes) return;
  // From pageable memory the call returns once the source has been staged, so the caller may reuse
  // host_src at once; stream order makes later kernels see the data.
  MVEB_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::download(void* host_dst, const void* src, size_t bytes) {
  if (!bytes) return;
  MVEB_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  MVEB_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (!bytes || dst == src) return;
  MVEB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::fill(float* dst, float value, size_t n) {
  if (!n) return;
  fill_kernel<<<elementwise_blocks(n), 256, 0, stream_>>>(dst, value, n);
  MVEB_CUDA_LAUNCH_CHECK("fill_kernel");
}

void CudaBackend::synchronize() { MVEB_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

Backend* cuda_backend_create(std::string* reason) {
  int count = 0, driver = 0;
  std::string why = probe(&count, &driver);
  if (!why.empty()) {
    if (reason) *reason = why;
    return nullptr;
  }
  try {
    CudaBackend* backend = new CudaBackend(0);
    // A GPU older than the compiled architectures has no kernel image (and no PTX it could JIT):
    // find out now with one tiny kernel rather than at the first real op.
    try {
      void* probe_block = backend->allocate(4);
      backend->fill(static_cast<float*>(probe_block), 0.f, 1);
      backend->synchronize();
      backend->deallocate(probe_block, 4);
    } catch (const Error& e) {
      delete backend;
      cudaDeviceProp prop;
      int major = 0, minor = 0;
      if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) major = prop.major, minor = prop.minor;
      cudaGetLastError();
      std::ostringstream os;
      os << "CUDA device 0 (compute capability " << major << "." << minor
         << ") cannot run this build (architectures " << MVEB_CUDA_ARCHS_STR << "): " << e.what();
      if (reason) *reason = os.str();
      return nullptr;
    }
    return backend;
  } catch (const Error& e) {
    if (reason) *reason = std::string("CUDA device 0 could not be initialised: ") + e.what();
    return nullptr;
  }
}

CudaInfo cuda_query_info() {
  CudaInfo info;
  info.compiled = true;
  info.archs = MVEB_CUDA_ARCHS_STR;
  cudaRuntimeGetVersion(&info.runtime_version);
  info.reason = probe(&info.device_count, &info.driver_version);
  if (!info.reason.empty()) return info;
  cudaDeviceProp prop;
  cudaError_t e = cudaGetDeviceProperties(&prop, 0);
  if (e != cudaSuccess) {
    cudaGetLastError();
    info.reason = "cudaGetDeviceProperties failed (" + error_text(e) + ")";
    return info;
  }
  info.device_name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_memory = prop.totalGlobalMem;
  int current = 0;
  cudaGetDevice(&current);
  if (current != 0) cudaSetDevice(0);
  e = cudaMemGetInfo(&info.free_memory, &info.total_memory);  // creates the primary context
  if (e != cudaSuccess) {
    cudaGetLastError();
    info.reason = "cudaMemGetInfo failed (" + error_text(e) + ")";
    return info;
  }
  info.available = true;
  return info;
}

}  // namespace mveb
