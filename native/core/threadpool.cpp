// threadpool.cpp: see threadpool.h.
#include "core/threadpool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace mveb {

namespace {
thread_local bool tl_inside_region = false;

// How long a thread polls for the next region (worker) or the end of the current one (caller)
// before it sleeps on the condition variable. Short enough that an idle pool costs nothing
// measurable; long enough to bridge the gaps between the regions of one kernel sequence.
constexpr int64_t kSpinMicros = 100;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls done() for up to kSpinMicros; true when it became true.
template <class Done>
bool spin_until(Done done) {
  const auto limit = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= limit) return false;
  }
}
}  // namespace

bool ThreadPool::inside_region() { return tl_inside_region; }

int default_thread_count() {
  if (const char* s = std::getenv("MVEB_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v >= 1 && v <= 1024) return static_cast<int>(v);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

ThreadPool::ThreadPool(int threads) : threads_(std::max(1, threads)) {
  for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* body;
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_relaxed) != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= participants_) continue;
      body = body_;
    }
    tl_inside_region = true;
    std::exception_ptr error;
    try {
      (*body)(index);
    } catch (...) {
      error = std::current_exception();
    }
    tl_inside_region = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (error && !error_) error_ = error;
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) done_.notify_one();
    }
  }
}

void ThreadPool::run_region(const std::function<void(int)>& body, int participants) {
  if (participants <= 1 || tl_inside_region) {
    for (int i = 0; i < participants; ++i) body(i);
    return;
  }
  std::lock_guard<std::mutex> region(region_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = &body;
    participants_ = participants;
    pending_.store(participants - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  tl_inside_region = true;
  std::exception_ptr error;
  try {
    body(0);
  } catch (...) {
    error = std::current_exception();
  }
  tl_inside_region = false;
  spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return pending_.load(std::memory_order_relaxed) == 0; });
  body_ = nullptr;
  if (!error) error = error_;
  error_ = nullptr;
  lock.unlock();
  // The region is over on every thread; the first failure (e.g. E_MEMORY from a kernel's scratch
  // buffer, E_NUMERIC from a check) reaches the caller instead of terminating a worker thread.
  if (error) std::rethrow_exception(error);
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t chunks = std::min<int64_t>(threads_, (n + grain - 1) / grain);
  if (chunks <= 1 || tl_inside_region) {
    fn(0, n, 0);
    return;
  }
  const int parts = static_cast<int>(chunks);
  std::function<void(int)> body = [&](int t) {
    int64_t begin = n * t / parts, end = n * (t + 1) / parts;
    if (begin < end) fn(begin, end, t);
  };
  run_region(body, parts);
}

void ThreadPool::parallel_tasks(int64_t tasks, const std::function<void(int64_t, int)>& fn) {
  if (tasks <= 0) return;
  int parts = static_cast<int>(std::min<int64_t>(threads_, tasks));
  if (parts <= 1 || tl_inside_region) {
    for (int64_t i = 0; i < tasks; ++i) fn(i, 0);
    return;
  }
  // Static interleaving, not a shared counter: kernels keep per-thread partial sums, and a fixed
  // task -> thread map makes their reduction order, hence every result, reproducible for a given
  // thread count (exact resume of a training run depends on it).
  std::function<void(int)> body = [&](int t) {
    for (int64_t i = t; i < tasks; i += parts) fn(i, t);
  };
  run_region(body, parts);
}

}  // namespace mveb
