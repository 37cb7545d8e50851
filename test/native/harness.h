// harness.h: the native test framework (no dependency). TEST(name) { ... } registers a case;
// EXPECT_* record failures and go on, REQUIRE aborts the case, SKIP(reason) skips it.
// Run: build/mveb_native_tests [substring-filter]   (npm test runs it through scripts/test-native.js)
// The last line is "N passed, N failed, N skipped".
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/runtime.h"

namespace mtest {

struct Case {
  const char* name;
  std::function<void()> fn;
};
std::vector<Case>& registry();
struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

struct SkipCase {
  std::string reason;
};
struct AbortCase {};

void record_failure(const char* file, int line, const std::string& msg);
// One Runtime for the whole test run (CPU backend with the default thread count).
mveb::Runtime& runtime();

// Relative error ||a - b|| / ||b|| in double; NaN anywhere gives +inf (NaN never passes).
double rel_error(const float* a, const float* b, size_t n);
double rel_error(const double* a, const double* b, size_t n);
double rel_error(const float* a, const double* b, size_t n);

// Deterministic random vectors (never all zeros) for test inputs.
std::vector<float> random_vector(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f);

}  // namespace mtest

#define MTEST_CAT2(a, b) a##b
#define MTEST_CAT(a, b) MTEST_CAT2(a, b)
#define TEST(name)                                                                      \
  static void MTEST_CAT(test_fn_, __LINE__)();                                          \
  static ::mtest::Registrar MTEST_CAT(test_reg_, __LINE__)(name, MTEST_CAT(test_fn_, __LINE__)); \
  static void MTEST_CAT(test_fn_, __LINE__)()

#define EXPECT_TRUE(cond, ...)                                                     \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::ostringstream mtest_os;                                                 \
      mtest_os << "expected " #cond " " __VA_OPT__(<< __VA_ARGS__);                \
      ::mtest::record_failure(__FILE__, __LINE__, mtest_os.str());                 \
    }                                                                              \
  } while (0)
#define REQUIRE(cond, ...)                                                         \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::ostringstream mtest_os;                                                 \
      mtest_os << "required " #cond " " __VA_OPT__(<< __VA_ARGS__);                \
      ::mtest::record_failure(__FILE__, __LINE__, mtest_os.str());                 \
      throw ::mtest::AbortCase{};                                                  \
    }                                                                              \
  } while (0)
// Relative error below tol (and finite).
#define EXPECT_REL(err, tol, what)                                                 \
  do {                                                                             \
    double mtest_e = (err);                                                        \
    if (!(mtest_e <= (tol))) {                                                     \
      std::ostringstream mtest_os;                                                 \
      mtest_os << what << ": relative error " << mtest_e << " > " << (tol);        \
      ::mtest::record_failure(__FILE__, __LINE__, mtest_os.str());                 \
    }                                                                              \
  } while (0)
#define EXPECT_THROWS_CODE(stmt, code_str)                                         \
  do {                                                                             \
    bool mtest_thrown = false;                                                     \
    try {                                                                          \
      stmt;                                                                        \
    } catch (const ::mveb::Error& mtest_e) {                                       \
      mtest_thrown = true;                                                         \
      if (mtest_e.code() != (code_str))                                            \
        ::mtest::record_failure(__FILE__, __LINE__, std::string("expected code ") + (code_str) + ", got " + mtest_e.code() + ": " + mtest_e.what()); \
    }                                                                              \
    if (!mtest_thrown) ::mtest::record_failure(__FILE__, __LINE__, "expected " #stmt " to throw " code_str); \
  } while (0)
#define SKIP(reason) throw ::mtest::SkipCase{reason}
