// tensor.cpp: Storage lifetime, memory counters and argument checks. See tensor.h.
#include "core/tensor.h"

#include <sstream>

#include "core/backend.h"
#include "core/error.h"

namespace mveb {

const char* dtype_name(DType d) { return d == DType::Float32 ? "float32" : "int32"; }
const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

Storage::Storage(Backend* b, size_t n) : backend(b), bytes(n) {
  data = backend->allocate(bytes == 0 ? 4 : bytes);
  backend->memory_allocated(bytes);
}

Storage::~Storage() {
  backend->deallocate(data, bytes == 0 ? 4 : bytes);
  backend->memory_freed(bytes);
}

std::string shape_string(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

// Refuses (E_SHAPE) a product past 2^48 elements (1 PiB of float32: no machine holds it), so that
// no byte count computed from it can overflow: [2^31, 2^31] had wrapped to a 0-byte allocation that
// a fill then wrote past.
int64_t shape_numel(const Shape& s) {
  constexpr int64_t kMaxElements = int64_t(1) << 48;
  int64_t n = 1;
  bool zero = false;
  for (int64_t d : s) {
    MVEB_CHECK(d >= 0, "E_SHAPE", "negative dimension in shape ", shape_string(s));
    zero = zero || d == 0;
    if (!zero) {
      MVEB_CHECK(d <= kMaxElements / n, "E_SHAPE", "shape ", shape_string(s), " has more than 2^48 elements");
      n *= d;
    }
  }
  return zero ? 0 : n;
}

Device Tensor::device() const { return storage->backend->device(); }

Tensor empty_tensor(Backend& backend, const Shape& shape, DType dtype) {
  const int64_t numel = shape_numel(shape);  // (checks the dimensions and their product)
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  t.storage = std::make_shared<Storage>(&backend, static_cast<size_t>(numel) * dtype_size(dtype));
  return t;
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  MVEB_CHECK(t.defined(), "E_ARG", what, ": tensor is missing");
  bool ok = t.shape.size() == expected.size();
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == t.shape[i];
  if (!ok) {
    std::ostringstream os;
    os << "[";
    for (size_t i = 0; i < expected.size(); ++i) os << (i ? ", " : "") << (expected[i] < 0 ? std::string("*") : std::to_string(expected[i]));
    os << "]";
    throw_error("E_SHAPE", what, ": expected shape ", os.str(), ", found ", shape_string(t.shape));
  }
}

void check_float(const Tensor& t, const char* what) {
  MVEB_CHECK(t.dtype == DType::Float32, "E_DTYPE", what, ": expected dtype float32, found ", dtype_name(t.dtype));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  MVEB_CHECK(a.storage->backend == b.storage->backend, "E_DEVICE", what, ": tensors are on different devices (",
             device_name(a.device()), " and ", device_name(b.device()), ")");
}

}  // namespace mveb
