// simd_lanes.h: the vector width and GCC vector types of the row loops compiled once per ISA
// (batchnorm_kernels.h, pool_kernels.h): kLanes floats per vector for the flags of the including
// translation unit (AVX-512 16, AVX2 8, baseline x86-64 4), unaligned loads and stores. Internal
// linkage (anonymous namespace), so each ISA's copy stays in its own translation unit.
#pragma once
#include <cstdint>

namespace mveb {
namespace {
namespace simd {
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
inline vf ld(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
inline void st(int32_t* p, vi v) { __builtin_memcpy(p, &v, sizeof v); }
}  // namespace simd
}  // namespace
}  // namespace mveb
