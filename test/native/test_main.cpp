// test_main.cpp: runner of the native tests (see harness.h). Exit status 1 when any case failed.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>

#include "core/error.h"
#include "core/random.h"
#include "harness.h"

namespace mtest {

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

static int g_failures_in_case = 0;
void record_failure(const char* file, int line, const std::string& msg) {
  ++g_failures_in_case;
  if (g_failures_in_case <= 10) std::printf("    FAIL %s:%d: %s\n", file, line, msg.c_str());
}

mveb::Runtime& runtime() {
  static mveb::Runtime rt;
  return rt;
}

template <typename A, typename B>
static double rel_error_impl(const A* a, const B* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    if (!std::isfinite(static_cast<double>(a[i])) || !std::isfinite(static_cast<double>(b[i]))) return INFINITY;
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}
double rel_error(const float* a, const float* b, size_t n) { return rel_error_impl(a, b, n); }
double rel_error(const double* a, const double* b, size_t n) { return rel_error_impl(a, b, n); }
double rel_error(const float* a, const double* b, size_t n) { return rel_error_impl(a, b, n); }

std::vector<float> random_vector(size_t n, uint64_t seed, float lo, float hi) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(lo + (hi - lo) * mveb::uniform01(seed, i));
  return v;
}

}  // namespace mtest

int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0, skipped = 0;
  for (auto& c : mtest::registry()) {
    if (filter && !std::strstr(c.name, filter)) continue;
    mtest::g_failures_in_case = 0;
    auto t0 = std::chrono::steady_clock::now();
    std::string skip;
    try {
      c.fn();
    } catch (const mtest::SkipCase& s) {
      skip = s.reason;
    } catch (const mtest::AbortCase&) {
    } catch (const mveb::Error& e) {
      mtest::record_failure(__FILE__, __LINE__, std::string("uncaught mveb::Error ") + e.code() + ": " + e.what());
    } catch (const std::exception& e) {
      mtest::record_failure(__FILE__, __LINE__, std::string("uncaught exception: ") + e.what());
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!skip.empty() && mtest::g_failures_in_case == 0) {
      ++skipped;
      std::printf("skip %s (%s)\n", c.name, skip.c_str());
    } else if (mtest::g_failures_in_case == 0) {
      ++passed;
      std::printf("ok   %s (%.0f ms)\n", c.name, ms);
    } else {
      ++failed;
      std::printf("FAIL %s (%d failures)\n", c.name, mtest::g_failures_in_case);
    }
    std::fflush(stdout);
  }
  std::printf("native: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed == 0 ? 0 : 1;
}
