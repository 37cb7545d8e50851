// runtime.cpp: see runtime.h.
#include "core/runtime.h"

#include "core/error.h"

namespace mveb {

Runtime::Runtime(int cpu_threads) : cpu_(cpu_backend_create(cpu_threads)) {}
Runtime::~Runtime() = default;

Backend* Runtime::try_cuda(std::string* reason) {
  std::lock_guard<std::mutex> lock(cuda_mutex_);
  if (!cuda_tried_) {
    cuda_tried_ = true;
    cuda_.reset(cuda_backend_create(&cuda_reason_));
  }
  if (reason) *reason = cuda_reason_;
  return cuda_.get();
}

Backend& Runtime::cuda() {
  std::string reason;
  Backend* b = try_cuda(&reason);
  MVEB_CHECK(b != nullptr, "E_DEVICE", "CUDA is not available: ", reason);
  return *b;
}

}  // namespace mveb
