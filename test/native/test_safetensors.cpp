// test_safetensors.cpp: the safetensors reader/writer (native/core/safetensors.h): round trip,
// each malformed-file error, and a mutation fuzz of >= 10,000 files (byte flips, truncations,
// header-length edits, token splices) that must each either parse into in-range entries or throw
// an mveb::Error -- never crash, never read out of bounds (run under -fsanitize=address to check
// the latter; see benchmarks/RESULTS.md).   Run: mveb_native_tests "safetensors:"
#include <cstdio>
#include <cstring>
#include <map>

#include "core/error.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "harness.h"

using namespace mveb;

namespace {

Tensor make_float(Backend& be, const Shape& shape, uint64_t seed) {
  Tensor t = empty_tensor(be, shape);
  auto v = mtest::random_vector(static_cast<size_t>(t.numel()), seed);
  if (!v.empty()) be.upload(t.f32(), v.data(), v.size() * 4);
  return t;
}

std::vector<uint8_t> sample_file(Backend& be) {
  Tensor counter = empty_tensor(be, {}, DType::Int32);
  int32_t c = 7;
  be.upload(counter.i32(), &c, 4);
  Tensor ints = empty_tensor(be, {3}, DType::Int32);
  int32_t iv[3] = {-1, 0, 123456};
  be.upload(ints.i32(), iv, 12);
  return safetensors::write({{"conv1.weight", make_float(be, {2, 3, 3, 3}, 1)},
                             {"bn1.bias", make_float(be, {2}, 2)},
                             {"bn1.num_batches_tracked", counter},
                             {"labels", ints},
                             {"empty", empty_tensor(be, {0, 4})}},
                            {{"format", "pt"}, {"note", "quote \" and \\ and \n"}});
}

std::vector<uint8_t> with_header(const std::string& json, size_t data_bytes) {
  std::vector<uint8_t> f(8 + json.size() + data_bytes, 0);
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) f[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(f.data() + 8, json.data(), json.size());
  return f;
}

std::string read_error_code(Backend& be, const std::vector<uint8_t>& f) {
  try {
    safetensors::read(be, f.data(), f.size(), nullptr);
  } catch (const Error& e) {
    return e.code();
  }
  return "ok";
}

}  // namespace

TEST("safetensors: write/read round trip keeps names, shapes, values, dtypes and metadata") {
  Backend& be = mtest::runtime().cpu();
  std::vector<uint8_t> f = sample_file(be);
  safetensors::Header h;
  auto t = safetensors::read(be, f.data(), f.size(), &h);
  REQUIRE(t.size() == 5);
  EXPECT_TRUE(t[0].first == "conv1.weight" && t[0].second.shape == Shape({2, 3, 3, 3}));
  auto ref = mtest::random_vector(54, 1);
  EXPECT_REL(mtest::rel_error(t[0].second.f32(), ref.data(), 54), 0.0, "conv1.weight");
  EXPECT_TRUE(h.entries[2].dtype == "I64", "num_batches_tracked is written as I64, found " << h.entries[2].dtype);
  EXPECT_TRUE(t[2].second.dtype == DType::Int32 && t[2].second.shape.empty() && t[2].second.i32()[0] == 7);
  EXPECT_TRUE(t[3].second.i32()[0] == -1 && t[3].second.i32()[2] == 123456);
  EXPECT_TRUE(t[4].second.shape == Shape({0, 4}));
  REQUIRE(h.metadata.size() == 2);
  EXPECT_TRUE(h.metadata[1].second == "quote \" and \\ and \n");
  EXPECT_TRUE((8 + (f[0] | (f[1] << 8))) % 8 == 0, "data section is 8-byte aligned");
  // a header past the reader's limit is refused when writing (such a file could not be read back)
  const std::string big(safetensors::kMaxHeaderBytes, 'v');
  EXPECT_THROWS_CODE(safetensors::write({{"x", t[0].second}}, {{"k", big}}), "E_ARG");
}

TEST("safetensors: F64/F16/BF16 convert to float32, I64 out of int32 range is E_DTYPE") {
  Backend& be = mtest::runtime().cpu();
  std::string json = "{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                     "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[16,20]},"
                     "\"c\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[20,22]}}";
  auto f = with_header(json, 22);
  double d[2] = {1.5, -2.25};
  std::memcpy(f.data() + 8 + json.size(), d, 16);
  uint16_t h16[2] = {0x3C00, 0xC000};  // 1.0, -2.0
  std::memcpy(f.data() + 8 + json.size() + 16, h16, 4);
  uint16_t bf = 0x4040;  // 3.0
  std::memcpy(f.data() + 8 + json.size() + 20, &bf, 2);
  auto t = safetensors::read(be, f.data(), f.size(), nullptr);
  EXPECT_TRUE(t[0].second.f32()[0] == 1.5f && t[0].second.f32()[1] == -2.25f);
  EXPECT_TRUE(t[1].second.f32()[0] == 1.0f && t[1].second.f32()[1] == -2.0f);
  EXPECT_TRUE(t[2].second.f32()[0] == 3.0f);
  std::string j2 = "{\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}";
  auto g = with_header(j2, 8);
  int64_t big = 1ll << 40;
  std::memcpy(g.data() + 8 + j2.size(), &big, 8);
  EXPECT_TRUE(read_error_code(be, g) == "E_DTYPE");
  std::string j3 = "{\"n\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  EXPECT_TRUE(read_error_code(be, with_header(j3, 1)) == "E_DTYPE");
}

TEST("safetensors: each malformed file gives E_FORMAT") {
  Backend& be = mtest::runtime().cpu();
  const std::string ok_entry = "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}";
  struct Case {
    const char* what;
    std::vector<uint8_t> file;
  };
  std::vector<Case> cases;
  cases.push_back({"shorter than 8 bytes", {1, 2, 3}});
  {
    auto f = with_header("{" + ok_entry + "}", 8);
    f[0] = 0, f[1] = 0, f[2] = 0, f[3] = 0x10;  // 256 MB header length
    cases.push_back({"oversized header", f});
  }
  {
    auto f = with_header("{" + ok_entry + "}", 8);
    f.resize(20);
    cases.push_back({"truncated header", f});
  }
  {
    auto f = with_header("{" + ok_entry + "}", 8);
    f.resize(f.size() - 3);
    cases.push_back({"truncated data", f});
  }
  cases.push_back({"malformed JSON", with_header("{\"a\":{\"dtype\":\"F32\",", 0)});
  cases.push_back({"trailing garbage", with_header("{" + ok_entry + "}x", 8)});
  cases.push_back({"not an object", with_header("[1,2]", 0)});
  cases.push_back({"unknown dtype", with_header("{\"a\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8)});
  cases.push_back({"offset out of range", with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8)});
  cases.push_back({"begin > end", with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8)});
  cases.push_back({"shape/bytes mismatch", with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8)});
  cases.push_back({"negative dim", with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8)});
  cases.push_back({"overflowing shape",
                   with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,0]}}", 8)});
  cases.push_back({"overlap", with_header("{" + ok_entry + ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8)});
  cases.push_back({"duplicate key", with_header("{" + ok_entry + "," + ok_entry + "}", 8)});
  cases.push_back({"deep nesting", with_header(std::string(40, '[') + std::string(40, ']'), 0)});
  cases.push_back({"bad escape", with_header("{\"a\\q\":1}", 0)});
  cases.push_back({"metadata not strings", with_header("{\"__metadata__\":{\"k\":1}}", 0)});
  cases.push_back({"missing field", with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8)});
  for (const Case& c : cases) {
    const std::string code = read_error_code(be, c.file);
    EXPECT_TRUE(code == "E_FORMAT", c.what << ": got " << code);
  }
  try {
    auto f = with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 8);
    safetensors::read(be, f.data(), f.size(), nullptr);
  } catch (const Error& e) {
    EXPECT_TRUE(std::string(e.what()).find("outside the 8-byte data section") != std::string::npos, e.what());
  }
}

TEST("safetensors: fuzz 12,000 mutated files: a valid parse or an mveb::Error, entries always in range") {
  Backend& be = mtest::runtime().cpu();
  const std::vector<uint8_t> base = sample_file(be);
  const uint64_t hlen = base[0] | (base[1] << 8);
  Rng rng(12345);
  const char* tokens[] = {"\"", "{", "}", "[", "]", ",", ":", "-1", "0", "18446744073709551615", "1e9", "\\u",
                          "\"F32\"", "\"XYZ\"", "null", "99999999999", "\"data_offsets\":[0,0]", " "};
  std::map<std::string, int> outcomes;
  int out_of_range = 0, other_exceptions = 0;
  const int kFiles = 12000;
  for (int it = 0; it < kFiles; ++it) {
    std::vector<uint8_t> f = base;
    const int kind = static_cast<int>(rng.next_u64() % 6);
    const int edits = 1 + static_cast<int>(rng.next_u64() % 4);
    for (int e = 0; e < edits; ++e) {
      if (f.empty()) break;
      switch (kind) {
        case 0: {  // flip bytes in the header
          size_t pos = 8 + rng.next_u64() % std::min<size_t>(hlen, f.size() > 8 ? f.size() - 8 : 1);
          if (pos < f.size()) f[pos] ^= static_cast<uint8_t>(1 + rng.next_u64() % 255);
          break;
        }
        case 1:  // truncate anywhere
          f.resize(rng.next_u64() % f.size());
          break;
        case 2: {  // edit the header length
          uint64_t v = rng.bernoulli(0.5) ? hlen + (rng.next_u64() % 64) - 32 : rng.next_u64() >> (rng.next_u64() % 64);
          for (int i = 0; i < 8 && i < static_cast<int>(f.size()); ++i) f[i] = static_cast<uint8_t>(v >> (8 * i));
          break;
        }
        case 3: {  // splice a JSON token into the header (keeping the length field: shifts the data)
          const char* tok = tokens[rng.next_u64() % (sizeof(tokens) / sizeof(tokens[0]))];
          size_t pos = 8 + rng.next_u64() % hlen;
          if (pos <= f.size()) f.insert(f.begin() + pos, tok, tok + std::strlen(tok));
          break;
        }
        case 4: {  // replace a digit run in the header by a token
          size_t pos = 8 + rng.next_u64() % hlen;
          if (pos < f.size() && f[pos] >= '0' && f[pos] <= '9') {
            const char* tok = tokens[rng.next_u64() % (sizeof(tokens) / sizeof(tokens[0]))];
            f[pos] = static_cast<uint8_t>(tok[0]);
          } else if (pos < f.size()) {
            f[pos] = static_cast<uint8_t>('0' + rng.next_u64() % 10);
          }
          break;
        }
        default: {  // random bytes anywhere
          size_t pos = rng.next_u64() % f.size();
          f[pos] = static_cast<uint8_t>(rng.next_u64());
          break;
        }
      }
    }
    try {
      safetensors::Header h;
      auto t = safetensors::read(be, f.data(), f.size(), &h);
      for (const auto& e : h.entries)
        if (e.begin > e.end || e.end > f.size()) ++out_of_range;
      outcomes["ok"]++;
    } catch (const Error& e) {
      outcomes[e.code()]++;
    } catch (...) {
      ++other_exceptions;
    }
  }
  EXPECT_TRUE(out_of_range == 0, out_of_range << " parsed entries out of range");
  EXPECT_TRUE(other_exceptions == 0, other_exceptions << " non-mveb exceptions");
  int total = 0;
  for (auto& kv : outcomes) total += kv.second;
  EXPECT_TRUE(total == kFiles);
  EXPECT_TRUE(outcomes["E_FORMAT"] > kFiles / 2, "most mutations must be rejected, E_FORMAT " << outcomes["E_FORMAT"]);
  std::printf("    fuzz: %d files:", kFiles);
  for (auto& kv : outcomes) std::printf(" %s %d", kv.first.c_str(), kv.second);
  std::printf("\n");
}
