// threadpool.h: a fixed pool of worker threads for the CPU kernels (MVEB_NUM_THREADS, default all
// cores). parallel_for splits [0, n) into contiguous chunks; the calling thread takes part. One
// parallel region runs at a time per pool (a mutex serialises callers from different async workers).
// Nested parallel_for calls from inside a region run serially on the calling thread. An exception
// thrown by the body on any thread is rethrown to the caller once every thread has finished.
// Between regions the threads spin for a short while (kSpinMicros) before they block on a condition
// variable: a kernel sequence starts hundreds of regions per training step, and a futex wake-up
// costs tens of microseconds on a VM.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mveb {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return threads_; }
  // Whether the calling thread is inside a parallel region of any pool (its parallel_for would run
  // serially, on this thread).
  static bool inside_region();
  // fn(begin, end, thread_index) over [0, n) split into at most size() chunks of >= grain items.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t, int)>& fn);
  // fn(task, thread_index) for task in [0, tasks): task i runs on thread i % min(size, tasks), in
  // increasing order. The fixed map keeps per-thread partial sums reproducible for a given thread
  // count (results never depend on timing).
  void parallel_tasks(int64_t tasks, const std::function<void(int64_t, int)>& fn);

 private:
  void worker(int index);
  void run_region(const std::function<void(int)>& body, int participants);

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex region_mutex_;  // one region at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* body_ = nullptr;
  int participants_ = 0;
  // written under mutex_; read without it only while spinning
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  bool stop_ = false;
  std::exception_ptr error_;  // first exception thrown on a worker in the current region
};

// Default thread count: MVEB_NUM_THREADS if set and valid, else hardware concurrency.
int default_thread_count();

}  // namespace mveb
