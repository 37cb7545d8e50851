// tensor.h: the native tensor. A Tensor is a shape, a dtype and a shared Storage (one allocation on
// one backend). Storage frees itself through its backend and keeps the per-device memory counters
// (memory() in JS) exact. Tensors are contiguous, row-major; image tensors at the API are NCHW.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mveb {

class Backend;

enum class DType { Float32, Int32 };
enum class Device { CPU, CUDA };

const char* dtype_name(DType d);
const char* device_name(Device d);
inline size_t dtype_size(DType) { return 4; }

// A snapshot of one backend's live-allocation counters (Backend::memory()).
struct MemoryCounter {
  int64_t buffers = 0;
  int64_t bytes = 0;
  int64_t peak_bytes = 0;
};

struct Storage {
  Storage(Backend* backend, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  Backend* backend;
  void* data = nullptr;
  size_t bytes;
};

using Shape = std::vector<int64_t>;
std::string shape_string(const Shape& s);
int64_t shape_numel(const Shape& s);

struct Tensor {
  std::shared_ptr<Storage> storage;
  Shape shape;
  DType dtype = DType::Float32;

  bool defined() const { return storage != nullptr; }
  int64_t numel() const { return shape_numel(shape); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  Device device() const;
  Backend& backend() const { return *storage->backend; }
  float* f32() const { return static_cast<float*>(storage->data); }
  int32_t* i32() const { return static_cast<int32_t*>(storage->data); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
};

// Allocates an uninitialised tensor on `backend`.
Tensor empty_tensor(Backend& backend, const Shape& shape, DType dtype = DType::Float32);

// Argument checks used across core and binding; throw mveb::Error with a clear message.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_float(const Tensor& t, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

}  // namespace mveb
