// kernel_util.h: small helpers shared by the CPU kernel files (gemm.cpp, conv.cpp, batchnorm.cpp,
// pool.cpp, ...): a 64-byte aligned scratch buffer owned by one call (no static state) and argument
// checks that throw mveb::Error with the expected and found values.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <new>

#include "core/error.h"

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

inline void check_nonnegative(const char* op, const char* what, long long v) {
  MVEB_CHECK(v >= 0, "E_SHAPE", op, ": ", what, " must be >= 0, found ", v);
}
inline void check_positive(const char* op, const char* what, long long v) {
  MVEB_CHECK(v > 0, "E_SHAPE", op, ": ", what, " must be > 0, found ", v);
}

}  // namespace mveb
