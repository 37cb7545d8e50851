// error.h: the one exception type of the native code. Every failure that can reach JavaScript is an
// mveb::Error with a stable code (E_SHAPE, E_DTYPE, E_DEVICE, E_CUDA, E_FORMAT, E_IO, E_ARG,
// E_NUMERIC, E_DISPOSED, E_UNSUPPORTED, E_INTERNAL); the binding turns it into a JS MvebError with
// the same code. Messages say what was expected and what was found.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace mveb {

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

// Builds a message from stream pieces: throw_error("E_SHAPE", "expected ", a, ", found ", b).
template <typename... Parts>
[[noreturn]] void throw_error(const char* code, const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(code, os.str());
}

#define MVEB_CHECK(cond, code, ...)                         \
  do {                                                      \
    if (!(cond)) ::mveb::throw_error(code, __VA_ARGS__);    \
  } while (0)

}  // namespace mveb
