// cpu_backend.cpp: construction and memory of the CPU backend. See cpu_backend.h.
#include "cpu/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include <sys/sysinfo.h>

#include "core/error.h"

namespace mveb {

CpuBackend::CpuBackend(int threads)
    : features_(detect_cpu_features()),
      isa_(select_isa(features_)),
      pool_(new ThreadPool(threads > 0 ? threads : default_thread_count())) {
  // MVEB_MATMUL_PRECISION=high|highest (the JS layer refuses other values with E_ARG).
  const char* p = std::getenv("MVEB_MATMUL_PRECISION");
  if (p != nullptr && std::strcmp(p, "high") == 0) set_matmul_precision(MatmulPrecision::High);
  // one lane per pool thread, all made here: lanes_ never changes size while ops (on other models,
  // from other threads) read it; a lane's workspaces allocate nothing until used
  for (int l = 0; l < pool_->size(); ++l) {
    std::unique_ptr<KeptScratch> k(new KeptScratch);
    for (int t = 0; t < pool_->size(); ++t) k->task.emplace_back(new gemm_detail::Workspace);
    lanes_.push_back(std::move(k));
  }
}

namespace {
// The run_concurrently lane of the task running on this thread (0 outside one).
thread_local size_t tl_lane = 0;
}  // namespace

CpuBackend::KeptScratch& CpuBackend::kept() { return *lanes_[tl_lane < lanes_.size() ? tl_lane : 0]; }

namespace {
// The machine's RAM plus swap (0 when unknown).
size_t physical_memory() {
  static const size_t ram = [] {
    struct sysinfo si;
    if (sysinfo(&si) != 0 || si.mem_unit == 0) return size_t(0);
    return (static_cast<size_t>(si.totalram) + static_cast<size_t>(si.totalswap)) * si.mem_unit;
  }();
  return ram;
}
}  // namespace

// Refuses (E_MEMORY) a request that would take this backend's live tensors past the machine's RAM
// (plus swap):
// Linux overcommits, so such arenas were granted and the process was OOM-killed while filling them
// (Model.resnet depth 50 at width 16: parameters and gradients ~23 GB each on a 24 GB machine).
void* CpuBackend::allocate(size_t bytes) {
  const size_t ram = physical_memory();
  const size_t held = static_cast<size_t>(std::max<int64_t>(0, memory().bytes));
  MVEB_CHECK(ram == 0 || (bytes <= ram && held <= ram - bytes), "E_MEMORY", "allocating ", bytes >> 20,
             " MiB would take mveb's CPU tensors (", held >> 20, " MiB held) past this machine's ", ram >> 20,
             " MiB of RAM and swap");
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  MVEB_CHECK(p != nullptr, "E_MEMORY", "out of host memory allocating ", bytes, " bytes");
  return p;
}
void CpuBackend::deallocate(void* p, size_t) { std::free(p); }
void CpuBackend::upload(void* dst, const void* src, size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
void CpuBackend::download(void* dst, const void* src, size_t bytes) { if (bytes) std::memcpy(dst, src, bytes); }
// Large copies between separate buffers on the pool, in 64 KiB pieces (one core reads ~12-14 GB/s from
// memory here, two twice that: the default pretrain's model copies, 2.2 MB each, 0.57 ms on one
// thread); overlapping ones with memmove on the calling thread.
void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (!bytes || dst == src) return;
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (bytes < (size_t(1) << 20) || (d < s + bytes && s < d + bytes)) {
    std::memmove(dst, src, bytes);
    return;
  }
  pool().parallel_for(static_cast<int64_t>(bytes), int64_t(1) << 16, [&](int64_t b, int64_t e, int) {
    std::memcpy(d + b, s + b, static_cast<size_t>(e - b));
  });
}
// On the pool in 64 KiB pieces (a resnet50 zeroGrad, 102 MB: 12 ms on one thread).
void CpuBackend::fill(float* dst, float value, size_t n) {
  pool().parallel_for(static_cast<int64_t>(n), int64_t(1) << 14, [&](int64_t b, int64_t e, int) {
    if (value == 0.f)
      std::memset(dst + b, 0, sizeof(float) * static_cast<size_t>(e - b));
    else
      std::fill(dst + b, dst + e, value);
  });
}

void CpuBackend::run_concurrently(const std::vector<std::function<void()>>& tasks) {
  if (tasks.size() < 2 || pool().size() < 2 || ThreadPool::inside_region()) {
    Backend::run_concurrently(tasks);
    return;
  }
  // lane t: the scratch set of pool thread t (tasks sharing a thread run in order)
  pool().parallel_tasks(static_cast<int64_t>(tasks.size()), [&](int64_t i, int t) {
    struct Lane {  // the thread's scratch set, back to lane 0 however the task ends
      explicit Lane(size_t l) { tl_lane = l; }
      ~Lane() { tl_lane = 0; }
    } lane(static_cast<size_t>(t));
    tasks[static_cast<size_t>(i)]();
  });
}

Backend* cpu_backend_create(int threads) { return new CpuBackend(threads); }

}  // namespace mveb
