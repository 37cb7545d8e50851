// random.h: counter-based random numbers. Value i of stream `seed` is a pure function of (seed, i),
// so results are identical across runs, machines, thread counts and backends. Used for
// Tensor.randn, weight initialisation and the augmentation pipeline.
#pragma once
#include <cmath>
#include <cstdint>

namespace mveb {

// SplitMix64 finaliser: a strong 64-bit mixing function.
inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
inline uint64_t hash2(uint64_t seed, uint64_t counter) { return mix64(mix64(seed) ^ (counter * 0xD1B54A32D192ED03ull)); }

// Uniform in (0, 1), 53 bits, never exactly 0.
inline double uniform01(uint64_t seed, uint64_t counter) {
  return (static_cast<double>(hash2(seed, counter) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller on two counter draws (2i, 2i+1).
inline double normal01(uint64_t seed, uint64_t i) {
  const double u1 = uniform01(seed, 2 * i), u2 = uniform01(seed, 2 * i + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// A small sequential generator for code that draws many values in order (augmentation parameters).
struct Rng {
  uint64_t seed, counter = 0;
  explicit Rng(uint64_t s) : seed(s) {}
  double uniform() { return uniform01(seed, counter++); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() { return normal01(seed, counter++); }
  bool bernoulli(double p) { return uniform() < p; }
  uint64_t next_u64() { return hash2(seed, counter++); }
};

}  // namespace mveb
