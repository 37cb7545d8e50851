// kernel_util.h: small helpers shared by the CPU kernel files (gemm.cpp, conv.cpp, batchnorm.cpp,
// pool.cpp, ...): a 64-byte aligned scratch buffer owned by one call (no static state); the argument
// checks come from core/op_checks.h (shared with the CUDA backend).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>

#include "core/error.h"
#include "core/op_checks.h"  // check_positive, check_nonnegative, the op-table shape checks

namespace mveb {

namespace {
// Whether rows of n floats at out may be written with non-temporal stores: only in the AVX-512 build
// of a kernel file, and only with whole aligned vectors (n a multiple of 16, out 64-byte aligned;
// every later row is then aligned too). Internal linkage: the answer depends on the file's ISA flags.
inline bool can_stream_rows(bool stream, const float* out, int n) {
#if defined(__AVX512F__)
  return stream && n % 16 == 0 && (reinterpret_cast<uintptr_t>(out) & 63) == 0;
#else
  (void)stream, (void)out, (void)n;
  return false;
#endif
}
}  // namespace

// fn(std::integral_constant<int, v>) for the v among Values equal to n, so that a kernel gets a run-time
// size as a compile-time constant (register tiles, unrolled widths); returns whether n was among them.
template <int... Values, typename Fn>
inline bool with_constant(int n, const Fn& fn) {
  return ((n == Values ? (fn(std::integral_constant<int, Values>{}), true) : false) || ...);
}

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
