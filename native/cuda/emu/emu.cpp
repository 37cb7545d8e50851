// emu.cpp: the CPU emulation of the CUDA runtime and kernel launches declared in cuda_runtime.h
// (beside this file). Used only by native/cuda/emu/run.sh.
// Threads of a block are ucontext fibers run round-robin in one OS thread: each runs until it
// reaches __syncthreads (or returns), and the block resumes when every live thread has arrived.
// Threads that returned count as arrived (as on Volta and later).
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "cuda_runtime.h"

namespace emu {

dim3 g_thread, g_block, g_block_dim, g_grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  bool done = false, waiting = false;
};
std::vector<Fiber> g_fibers;
ucontext_t g_scheduler;
int g_current = -1, g_count = 0;
const std::function<void()>* g_body = nullptr;
std::vector<double> g_exchange;
cudaError_t g_pending = cudaSuccess;
std::mutex g_atomic_mutex;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

void set_thread_index(int i) {
  unsigned bx = g_block_dim.x, by = g_block_dim.y;
  g_thread = dim3(i % bx, (i / bx) % by, i / (bx * by));
}

void trampoline() {
  (*g_body)();
  g_fibers[g_current].done = true;  // uc_link returns to the scheduler
}

void run_block() {
  if (static_cast<int>(g_fibers.size()) < g_count) g_fibers.resize(g_count);
  g_exchange.assign(g_count, 0.0);
  for (int i = 0; i < g_count; ++i) {
    Fiber& f = g_fibers[i];
    if (!f.stack) f.stack = static_cast<char*>(std::malloc(kStackBytes));
    f.done = f.waiting = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &g_scheduler;
    makecontext(&f.ctx, trampoline, 0);
  }
  for (;;) {
    bool any_live = false;
    for (int i = 0; i < g_count; ++i) {
      Fiber& f = g_fibers[i];
      if (f.done) continue;
      f.waiting = false;
      g_current = i;
      set_thread_index(i);
      swapcontext(&g_scheduler, &f.ctx);
      if (!f.done) any_live = true;
    }
    if (!any_live) break;
    for (int i = 0; i < g_count; ++i)
      if (!g_fibers[i].done && !g_fibers[i].waiting) die("a thread neither returned nor reached __syncthreads");
  }
  g_current = -1;
}

}  // namespace

void syncthreads() {
  if (g_current < 0) die("__syncthreads outside a kernel");
  Fiber& f = g_fibers[g_current];
  f.waiting = true;
  int me = g_current;
  swapcontext(&f.ctx, &g_scheduler);
  g_current = me;
  set_thread_index(me);
}

double shuffle_down(double v, int offset) {
  int me = g_current;
  g_exchange[me] = v;
  syncthreads();
  int lane = me % 32;
  double r = (lane + offset < 32 && me + offset < g_count) ? g_exchange[me + offset] : v;
  syncthreads();
  return r;
}

float atomic_add(float* p, float v) {
  std::lock_guard<std::mutex> lock(g_atomic_mutex);
  float old = *p;
  *p = old + v;
  return old;
}

void launch_impl(dim3 grid, dim3 block, const std::function<void()>& body) {
  unsigned long long threads = 1ULL * block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) {
    g_pending = cudaErrorInvalidConfiguration;
    return;
  }
  if (g_current >= 0) die("nested launch");
  g_grid_dim = grid;
  g_block_dim = block;
  g_count = static_cast<int>(threads);
  g_body = &body;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block = dim3(x, y, z);
        run_block();
      }
  g_body = nullptr;
}

}  // namespace emu

// ---- runtime API ----
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    default: return "emulated error";
  }
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    default: return "cudaErrorUnknown";
  }
}
cudaError_t cudaGetLastError() {
  cudaError_t e = emu::g_pending;
  emu::g_pending = cudaSuccess;
  return e;
}
cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  // few "SMs", so that split-K and row splits engage at the tests' small sizes
  const char* e = std::getenv("MVEB_EMU_SMS");
  *value = e ? std::atoi(e) : 2;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  std::snprintf(prop->name, sizeof prop->name, "CPU emulation");
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = size_t(1) << 34;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* f, size_t* t) { *f = *t = size_t(1) << 34; return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = reinterpret_cast<cudaStream_t>(0x1);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes ? bytes : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  // garbage, as fresh device memory: unwritten outputs must not pass by luck
  std::memset(*p, 0xFF, bytes);  // 0xFFFFFFFF is a NaN
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) { std::free(p); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
