// safetensors.h: a hardened reader and a writer of the safetensors format (8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}},
// then the raw little-endian tensor bytes). The reader never trusts the file: header over 100 MB or
// past the end, malformed JSON (depth, escapes, duplicates, trailing bytes), unknown dtype, negative
// or overflowing shapes, byte counts that disagree with the shape, offsets out of range or
// overlapping all give mveb::Error E_FORMAT (E_DTYPE for a known dtype we cannot convert), never an
// out-of-bounds read.
// Test: test/native/test_safetensors.cpp (round trips, each error, >= 10,000 mutated files):
//   mveb_native_tests "safetensors:"
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace mveb {
namespace safetensors {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct Entry {
  std::string name;
  std::string dtype;   // "F32", "I64", ...
  size_t element_size = 0;
  Shape shape;
  size_t begin = 0, end = 0;  // absolute byte offsets in the file buffer
};

struct Header {
  std::vector<Entry> entries;  // in header order
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Parses and validates the header of a whole file held in memory. Never reads outside [data, data+size).
Header parse(const uint8_t* data, size_t size);

// Reads every tensor onto `backend`: F32 (and F64/F16/BF16, converted) -> float32; I32, and I64
// within int32 range -> int32. Other dtypes: E_DTYPE.
std::vector<std::pair<std::string, Tensor>> read(Backend& backend, const uint8_t* data, size_t size, Header* header_out);

// Serializes tensors (float32 -> F32; int32 -> I32, except names ending in ".num_batches_tracked"
// which are written as I64 like torchvision's). Names must be unique and non-empty.
std::vector<uint8_t> write(const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const std::vector<std::pair<std::string, std::string>>& metadata);

}  // namespace safetensors
}  // namespace mveb
