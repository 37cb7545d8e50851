// runtime.h: everything one user of the library owns: the CPU backend (with its thread pool) and,
// created on first use, the CUDA backend. One Runtime per Node.js environment (main thread and each
// worker_thread get their own; the addon keeps no static mutable state), one in the test executable.
#pragma once
#include <memory>
#include <mutex>
#include <string>

#include "core/backend.h"

namespace mveb {

class Runtime {
 public:
  explicit Runtime(int cpu_threads = 0);
  ~Runtime();
  Backend& cpu() { return *cpu_; }
  // The CUDA backend; throws E_DEVICE naming the reason when CUDA cannot be used.
  Backend& cuda();
  // nullptr (and the reason) when CUDA cannot be used; never throws.
  Backend* try_cuda(std::string* reason);
  Backend& backend(Device d) { return d == Device::CPU ? cpu() : cuda(); }

 private:
  std::unique_ptr<Backend> cpu_;
  std::unique_ptr<Backend> cuda_;
  std::string cuda_reason_;
  bool cuda_tried_ = false;
  std::mutex cuda_mutex_;
};

}  // namespace mveb
