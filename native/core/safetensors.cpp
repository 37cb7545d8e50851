// safetensors.cpp: hardened safetensors reader and writer. See safetensors.h.
// Test: mveb_native_tests "safetensors:" (includes the 10,000-file mutation fuzz).
#include "core/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "core/error.h"

namespace mveb {
namespace safetensors {

namespace {

// ---- a small strict JSON parser (RFC 8259 subset sufficient for safetensors headers) ----
struct JValue {
  enum Type { Null, Bool, Number, String, Array, Object } type = Null;
  bool boolean = false;
  bool is_uint = false;  // a non-negative integer literal that fits uint64
  uint64_t uint = 0;
  std::string str;
  std::vector<JValue> arr;
  std::vector<std::pair<std::string, JValue>> obj;
};

class JsonParser {
 public:
  JsonParser(const char* p, size_t n, size_t base) : p_(p), n_(n), base_(base) {}
  JValue parse_document() {
    JValue v = value(0);
    skip_ws();
    if (i_ != n_) fail("unexpected bytes after the JSON header");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw_error("E_FORMAT", "safetensors header: ", what, " at byte ", base_ + i_);
  }
  void skip_ws() {
    while (i_ < n_ && (p_[i_] == ' ' || p_[i_] == '\t' || p_[i_] == '\n' || p_[i_] == '\r')) ++i_;
  }
  char peek() const { return i_ < n_ ? p_[i_] : '\0'; }
  bool at_end() const { return i_ >= n_; }
  void expect(char c) {
    if (at_end() || p_[i_] != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  JValue value(int depth) {
    if (depth > 16) fail("nesting deeper than 16");
    skip_ws();
    if (at_end()) fail("unexpected end");
    const char c = p_[i_];
    JValue v;
    if (c == '{') {
      v.type = JValue::Object;
      ++i_;
      skip_ws();
      if (peek() == '}') {
        ++i_;
        return v;
      }
      std::set<std::string> keys;
      for (;;) {
        skip_ws();
        if (peek() != '"') fail("expected a string key");
        std::string key = string();
        if (!keys.insert(key).second) fail("duplicate key '" + key + "'");
        skip_ws();
        expect(':');
        JValue child = value(depth + 1);
        v.obj.emplace_back(std::move(key), std::move(child));
        skip_ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.type = JValue::Array;
      ++i_;
      skip_ws();
      if (peek() == ']') {
        ++i_;
        return v;
      }
      for (;;) {
        v.arr.push_back(value(depth + 1));
        skip_ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.type = JValue::String;
      v.str = string();
      return v;
    }
    if (literal("true")) {
      v.type = JValue::Bool;
      v.boolean = true;
      return v;
    }
    if (literal("false")) {
      v.type = JValue::Bool;
      return v;
    }
    if (literal("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail(std::string("unexpected character '") + (c >= 32 && c < 127 ? std::string(1, c) : std::string("?")) + "'");
  }
  bool literal(const char* lit) {
    const size_t len = std::strlen(lit);
    if (n_ - i_ >= len && std::memcmp(p_ + i_, lit, len) == 0) {
      i_ += len;
      return true;
    }
    return false;
  }
  JValue number() {
    JValue v;
    v.type = JValue::Number;
    const size_t start = i_;
    bool negative = false;
    if (peek() == '-') {
      negative = true;
      ++i_;
    }
    if (at_end() || !(p_[i_] >= '0' && p_[i_] <= '9')) fail("malformed number");
    if (p_[i_] == '0' && i_ + 1 < n_ && p_[i_ + 1] >= '0' && p_[i_ + 1] <= '9') fail("number with a leading zero");
    bool overflow = false;
    uint64_t u = 0;
    while (!at_end() && p_[i_] >= '0' && p_[i_] <= '9') {
      const uint64_t d = static_cast<uint64_t>(p_[i_] - '0');
      if (u > (std::numeric_limits<uint64_t>::max() - d) / 10) overflow = true;
      else u = u * 10 + d;
      ++i_;
    }
    bool integer = true;
    if (peek() == '.') {
      integer = false;
      ++i_;
      if (at_end() || !(p_[i_] >= '0' && p_[i_] <= '9')) fail("malformed number");
      while (!at_end() && p_[i_] >= '0' && p_[i_] <= '9') ++i_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integer = false;
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (at_end() || !(p_[i_] >= '0' && p_[i_] <= '9')) fail("malformed number");
      while (!at_end() && p_[i_] >= '0' && p_[i_] <= '9') ++i_;
    }
    (void)start;
    v.is_uint = integer && !negative && !overflow;
    v.uint = u;
    return v;
  }
  void put_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) s += static_cast<char>(cp);
    else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (n_ - i_ < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char h = p_[i_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string string() {
    expect('"');
    std::string s;
    for (;;) {
      if (at_end()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(p_[i_++]);
      if (c == '"') return s;
      if (c < 0x20) fail("control character in a string");
      if (c != '\\') {
        s += static_cast<char>(c);
        continue;
      }
      if (at_end()) fail("unterminated escape");
      const char e = p_[i_++];
      switch (e) {
        case '"': s += '"'; break;
        case '\\': s += '\\'; break;
        case '/': s += '/'; break;
        case 'b': s += '\b'; break;
        case 'f': s += '\f'; break;
        case 'n': s += '\n'; break;
        case 'r': s += '\r'; break;
        case 't': s += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - i_ < 2 || p_[i_] != '\\' || p_[i_ + 1] != 'u') fail("unpaired surrogate");
            i_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate");
          }
          put_utf8(s, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }

  const char* p_;
  size_t n_, i_ = 0, base_;
};

size_t dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else v = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

Header parse(const uint8_t* data, size_t size) {
  MVEB_CHECK(size >= 8, "E_FORMAT", "safetensors: file is ", size, " bytes, too short for the 8-byte header length");
  const uint64_t hlen = read_le64(data);
  MVEB_CHECK(hlen <= kMaxHeaderBytes, "E_FORMAT", "safetensors: header length ", hlen, " exceeds the limit of ",
             kMaxHeaderBytes, " bytes");
  MVEB_CHECK(hlen <= size - 8, "E_FORMAT", "safetensors: header length ", hlen, " runs past the end of the ", size,
             "-byte file (truncated?)");
  MVEB_CHECK(hlen >= 2, "E_FORMAT", "safetensors: header length ", hlen, " is too short for a JSON object");
  JsonParser jp(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(hlen), 8);
  JValue root = jp.parse_document();
  MVEB_CHECK(root.type == JValue::Object, "E_FORMAT", "safetensors: header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(hlen);
  const size_t data_size = size - data_start;
  Header h;
  for (auto& [name, v] : root.obj) {
    if (name == "__metadata__") {
      MVEB_CHECK(v.type == JValue::Object, "E_FORMAT", "safetensors: __metadata__ must be an object");
      for (auto& [k, mv] : v.obj) {
        MVEB_CHECK(mv.type == JValue::String, "E_FORMAT", "safetensors: __metadata__ value of '", k,
                   "' must be a string");
        h.metadata.emplace_back(k, mv.str);
      }
      continue;
    }
    MVEB_CHECK(!name.empty(), "E_FORMAT", "safetensors: empty tensor name");
    MVEB_CHECK(v.type == JValue::Object, "E_FORMAT", "safetensors: entry '", name, "' must be an object");
    const JValue *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (auto& [k, f] : v.obj) {
      if (k == "dtype") dtype = &f;
      else if (k == "shape") shape = &f;
      else if (k == "data_offsets") offsets = &f;
      else throw_error("E_FORMAT", "safetensors: entry '", name, "' has an unknown field '", k, "'");
    }
    MVEB_CHECK(dtype && shape && offsets, "E_FORMAT", "safetensors: entry '", name,
               "' needs dtype, shape and data_offsets");
    MVEB_CHECK(dtype->type == JValue::String, "E_FORMAT", "safetensors: dtype of '", name, "' must be a string");
    Entry e;
    e.name = name;
    e.dtype = dtype->str;
    e.element_size = dtype_size(e.dtype);
    MVEB_CHECK(e.element_size > 0, "E_FORMAT", "safetensors: entry '", name, "' has unknown dtype '", e.dtype, "'");
    MVEB_CHECK(shape->type == JValue::Array && shape->arr.size() <= 16, "E_FORMAT", "safetensors: shape of '", name,
               "' must be an array of at most 16 dimensions");
    uint64_t numel = 1;
    bool overflow = false;
    for (const JValue& d : shape->arr) {
      MVEB_CHECK(d.type == JValue::Number && d.is_uint && d.uint <= (1ull << 53), "E_FORMAT",
                 "safetensors: shape of '", name, "' must hold non-negative integers");
      if (d.uint != 0 && numel > (std::numeric_limits<uint64_t>::max() / 16) / d.uint) overflow = true;
      else numel *= d.uint;
      e.shape.push_back(static_cast<int64_t>(d.uint));
    }
    MVEB_CHECK(offsets->type == JValue::Array && offsets->arr.size() == 2, "E_FORMAT", "safetensors: data_offsets of '",
               name, "' must be [begin, end]");
    for (const JValue& o : offsets->arr)
      MVEB_CHECK(o.type == JValue::Number && o.is_uint, "E_FORMAT", "safetensors: data_offsets of '", name,
                 "' must be non-negative integers");
    const uint64_t b = offsets->arr[0].uint, en = offsets->arr[1].uint;
    MVEB_CHECK(b <= en && en <= data_size, "E_FORMAT", "safetensors: data_offsets [", b, ", ", en, "] of '", name,
               "' are outside the ", data_size, "-byte data section");
    bool zero = false;
    for (int64_t d : e.shape) zero = zero || d == 0;
    if (zero) numel = 0, overflow = false;
    MVEB_CHECK(!overflow && numel * e.element_size == en - b, "E_FORMAT", "safetensors: '", name, "' has shape ",
               shape_string(e.shape), " of dtype ", e.dtype, " but ", en - b, " bytes of data");
    e.begin = data_start + static_cast<size_t>(b);
    e.end = data_start + static_cast<size_t>(en);
    h.entries.push_back(std::move(e));
  }
  std::vector<const Entry*> sorted;
  for (const Entry& e : h.entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < sorted.size(); ++i)
    MVEB_CHECK(sorted[i - 1]->end <= sorted[i]->begin, "E_FORMAT", "safetensors: data of '", sorted[i - 1]->name,
               "' and '", sorted[i]->name, "' overlap");
  return h;
}

std::vector<std::pair<std::string, Tensor>> read(Backend& backend, const uint8_t* data, size_t size, Header* out) {
  Header h = parse(data, size);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const Entry& e : h.entries) {
    const size_t n = (e.end - e.begin) / e.element_size;
    const uint8_t* src = data + e.begin;
    Tensor t;
    if (e.dtype == "F32" || e.dtype == "F64" || e.dtype == "F16" || e.dtype == "BF16") {
      std::vector<float> host(n);
      if (e.dtype == "F32") {
        if (n) std::memcpy(host.data(), src, n * 4);
      } else if (e.dtype == "F64") {
        for (size_t i = 0; i < n; ++i) {
          double d;
          std::memcpy(&d, src + 8 * i, 8);
          host[i] = static_cast<float>(d);
        }
      } else {
        for (size_t i = 0; i < n; ++i) {
          uint16_t v;
          std::memcpy(&v, src + 2 * i, 2);
          if (e.dtype == "F16") host[i] = half_to_float(v);
          else {
            const uint32_t bits = static_cast<uint32_t>(v) << 16;
            std::memcpy(&host[i], &bits, 4);
          }
        }
      }
      t = empty_tensor(backend, e.shape, DType::Float32);
      if (n) backend.upload(t.f32(), host.data(), n * 4);
    } else if (e.dtype == "I32" || e.dtype == "I64") {
      std::vector<int32_t> host(n);
      if (e.dtype == "I32") {
        if (n) std::memcpy(host.data(), src, n * 4);
      } else {
        for (size_t i = 0; i < n; ++i) {
          int64_t v;
          std::memcpy(&v, src + 8 * i, 8);
          MVEB_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(), "E_DTYPE",
                     "safetensors: I64 tensor '", e.name, "' holds ", v, ", outside the int32 range");
          host[i] = static_cast<int32_t>(v);
        }
      }
      t = empty_tensor(backend, e.shape, DType::Int32);
      if (n) backend.upload(t.i32(), host.data(), n * 4);
    } else {
      throw_error("E_DTYPE", "safetensors: tensor '", e.name, "' has dtype ", e.dtype,
                  "; supported: F32, F64, F16, BF16 (read as float32), I32, I64 (read as int32)");
    }
    tensors.emplace_back(e.name, std::move(t));
  }
  if (out) *out = std::move(h);
  return tensors;
}

namespace {
void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  out += '"';
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

std::vector<uint8_t> write(const std::vector<std::pair<std::string, Tensor>>& tensors,
                           const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::set<std::string> names;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i) header += ',';
      json_string(header, metadata[i].first);
      header += ':';
      json_string(header, metadata[i].second);
    }
    header += '}';
  }
  size_t offset = 0;
  std::vector<size_t> sizes;
  for (const auto& [name, t] : tensors) {
    MVEB_CHECK(!name.empty() && name != "__metadata__", "E_ARG", "safetensors: invalid tensor name '", name, "'");
    MVEB_CHECK(names.insert(name).second, "E_ARG", "safetensors: tensor name '", name, "' appears twice");
    MVEB_CHECK(t.defined(), "E_ARG", "safetensors: tensor '", name, "' is missing");
    const bool i64 = t.dtype == DType::Int32 && ends_with(name, ".num_batches_tracked");
    const size_t bytes = static_cast<size_t>(t.numel()) * (i64 ? 8 : 4);
    if (header.size() > 1) header += ',';
    json_string(header, name);
    header += ":{\"dtype\":\"";
    header += t.dtype == DType::Float32 ? "F32" : (i64 ? "I64" : "I32");
    header += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) header += (i ? "," : "") + std::to_string(t.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    sizes.push_back(bytes);
    offset += bytes;
  }
  header += '}';
  while (header.size() % 8) header += ' ';
  // (the reader refuses larger headers: a file written past it could never be read back)
  MVEB_CHECK(header.size() <= kMaxHeaderBytes, "E_ARG", "safetensors: the header (names, shapes and metadata) would be ",
             header.size(), " bytes, past the limit of ", kMaxHeaderBytes, " that files are read with");
  std::vector<uint8_t> out(8 + header.size() + offset);
  const uint64_t hl = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(hl >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  size_t pos = 8 + header.size();
  size_t k = 0;
  for (const auto& [name, t] : tensors) {
    const size_t n = static_cast<size_t>(t.numel());
    if (sizes[k] == n * 8) {
      std::vector<int32_t> v(n);
      if (n) t.backend().download(v.data(), t.i32(), n * 4);
      for (size_t i = 0; i < n; ++i) {
        const int64_t w = v[i];
        std::memcpy(out.data() + pos + 8 * i, &w, 8);
      }
    } else if (n) {
      t.backend().download(out.data() + pos, t.storage->data, n * 4);
    }
    pos += sizes[k++];
  }
  return out;
}

}  // namespace safetensors
}  // namespace mveb
