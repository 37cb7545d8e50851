// kernel_util.h: small helpers shared by the CPU kernel files (gemm.cpp, conv.cpp, batchnorm.cpp,
// pool.cpp, ...): a 64-byte aligned scratch buffer owned by one call (no static state); the argument
// checks come from core/op_checks.h (shared with the CUDA backend).
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

#include "core/error.h"
#include "core/op_checks.h"  // check_positive, check_nonnegative, the op-table shape checks

namespace mveb {

// Scratch memory for one kernel call; freed when it goes out of scope.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(size_t floats) {
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    MVEB_CHECK(p_ != nullptr, "E_MEMORY", "out of host memory allocating ", bytes, " bytes of kernel workspace");
  }
  ~ScratchBuffer() { std::free(p_); }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  float* get() const { return p_; }

 private:
  float* p_ = nullptr;
};

}  // namespace mveb
