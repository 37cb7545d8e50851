// test_cuda.cpp: cross-backend tests of the CUDA backend (native/cuda). Every op of core/backend.h
// runs on the CPU backend and on the CUDA backend with the same random odd-sized inputs; outputs
// are poisoned (NaN) first and compared by relative error (engineering.md section 4). Outputs that
// accumulate start from random values. Without a GPU every case is skipped with the reason.
// Run: `mveb_native_tests cuda:` in a build with -DMVEB_CUDA=on (on the GPU machine:
// benchmarks/device/check.sh). Only compiled when the CUDA backend is (MVEB_WITH_CUDA).
// Self-check of these tests without a GPU: MVEB_TEST_CUDA_AS_CPU=1 makes the "CUDA" side a second
// CPU backend with 1 thread (other summation orders), so every case runs its comparisons; this
// checks the test code and tolerances, not the CUDA kernels.
#ifdef MVEB_WITH_CUDA
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "harness.h"

namespace {

using mveb::Backend;
using mveb::Tensor;
using Outputs = std::vector<std::vector<float>>;

Backend& cpu() { return mtest::runtime().cpu(); }

Backend& cuda_or_skip() {
  if (const char* e = std::getenv("MVEB_TEST_CUDA_AS_CPU"); e && std::strcmp(e, "1") == 0) {
    static std::unique_ptr<Backend> stand_in(mveb::cpu_backend_create(1));
    return *stand_in;
  }
  std::string reason;
  Backend* b = mtest::runtime().try_cuda(&reason);
  if (!b) SKIP("no GPU: " + reason);
  return *b;
}

Tensor from_host(Backend& b, const std::vector<float>& v) {
  Tensor t = mveb::empty_tensor(b, {static_cast<int64_t>(v.size())});
  b.upload(t.f32(), v.data(), v.size() * sizeof(float));
  return t;
}
// Random input in [lo, hi) (same values on both backends: the seed decides).
Tensor input(Backend& b, size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return from_host(b, mtest::random_vector(n, seed, lo, hi));
}
// Output that the op must assign: NaN everywhere, so an unwritten element fails the comparison.
Tensor poisoned(Backend& b, size_t n) {
  return from_host(b, std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
}
std::vector<float> to_host(Backend& b, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  b.download(v.data(), t.storage->data, v.size() * sizeof(float));
  return v;
}
std::vector<float> int_to_host(Backend& b, const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  b.download(v.data(), t.storage->data, v.size() * sizeof(int32_t));
  return std::vector<float>(v.begin(), v.end());
}

// Runs `run` on the CPU (reference) and on CUDA, compares output k: relative error <= tols[k]
// (the last tolerance repeats); a tolerance of 0 demands bitwise-equal values.
void compare(const std::string& what, const std::function<Outputs(Backend&)>& run, std::vector<double> tols) {
  Backend& gpu = cuda_or_skip();
  Outputs ref = run(cpu());
  Outputs got = run(gpu);
  REQUIRE(ref.size() == got.size());
  for (size_t k = 0; k < ref.size(); ++k) {
    REQUIRE(ref[k].size() == got[k].size(), what << " output " << k);
    const double tol = tols[std::min(k, tols.size() - 1)];
    if (tol == 0) {
      size_t bad = 0;
      while (bad < ref[k].size() && std::memcmp(&ref[k][bad], &got[k][bad], sizeof(float)) == 0) ++bad;
      EXPECT_TRUE(bad == ref[k].size(), what << " output " << k << " differs at " << bad << ": " << got[k][bad]
                                              << " vs " << ref[k][bad]);
    } else {
      EXPECT_REL(mtest::rel_error(got[k].data(), ref[k].data(), ref[k].size()), tol, what << " output " << k);
    }
  }
}
void compare(const std::string& what, const std::function<Outputs(Backend&)>& run, double tol) {
  compare(what, run, std::vector<double>{tol});
}

// Batch norm's ReLU mask (core/backend.h) of y: bit set iff y > 0, in float slots to upload.
std::vector<float> relu_mask_of(const std::vector<float>& y, int M, int C) {
  const size_t row = mveb::relu_mask_row_bytes(C);
  std::vector<uint8_t> bytes(mveb::relu_mask_bytes(M, C), 0);
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < C; ++c)
      if (y[static_cast<size_t>(m) * C + c] > 0.f) bytes[m * row + c / 8] |= static_cast<uint8_t>(1u << (c % 8));
  std::vector<float> slots((bytes.size() + 3) / 4, 0.f);
  std::memcpy(slots.data(), bytes.data(), bytes.size());
  return slots;
}
// How many bytes of the mask written on backend b differ from the mask of its own output y (0 when right).
float mask_mismatches(Backend& b, const Tensor& mask, const std::vector<float>& y, int M, int C) {
  const std::vector<float> want = relu_mask_of(y, M, C), got = to_host(b, mask);
  const size_t bytes = mveb::relu_mask_bytes(M, C);
  float bad = 0;
  for (size_t i = 0; i < bytes; ++i)
    bad += reinterpret_cast<const uint8_t*>(want.data())[i] != reinterpret_cast<const uint8_t*>(got.data())[i];
  return bad;
}

}  // namespace

TEST("cuda: discovery reports compiled, the architectures and a reason when unavailable") {
  mveb::CudaInfo info = mveb::cuda_query_info();
  EXPECT_TRUE(info.compiled);
  EXPECT_TRUE(info.archs == MVEB_CUDA_ARCHS_STR, "archs '" << info.archs << "'");
  EXPECT_TRUE(info.runtime_version > 0, "runtime " << info.runtime_version);
  std::string reason;
  Backend* b = mtest::runtime().try_cuda(&reason);
  if (!info.available) {
    EXPECT_TRUE(!info.reason.empty());
    EXPECT_TRUE(b == nullptr);
    EXPECT_TRUE(reason == info.reason, "'" << reason << "' vs '" << info.reason << "'");
    EXPECT_TRUE(info.device_name.empty() && info.total_memory == 0);
  } else {
    EXPECT_TRUE(info.reason.empty(), info.reason);
    EXPECT_TRUE(b != nullptr, reason);
    EXPECT_TRUE(info.device_count >= 1 && !info.device_name.empty() && info.cc_major >= 1);
    EXPECT_TRUE(info.total_memory > 0 && info.free_memory > 0 && info.free_memory <= info.total_memory);
    EXPECT_TRUE(info.driver_version > 0);
  }
  // Without CUDA, Runtime::cuda() names the reason in an E_DEVICE error.
  if (!b) EXPECT_THROWS_CODE(mtest::runtime().cuda(), "E_DEVICE");
}

TEST("cuda: memory round trip, copy, fill, counters and block reuse") {
  Backend& gpu = cuda_or_skip();
  const auto before = gpu.memory();
  const size_t n = 100003;
  std::vector<float> host = mtest::random_vector(n, 1);
  {
    Tensor a = from_host(gpu, host);
    EXPECT_TRUE(gpu.memory().bytes == before.bytes + static_cast<int64_t>(n * 4));
    Tensor b = poisoned(gpu, n);
    gpu.copy(b.f32(), a.f32(), n * sizeof(float));
    std::vector<float> back = to_host(gpu, b);
    EXPECT_TRUE(std::memcmp(back.data(), host.data(), n * sizeof(float)) == 0);
    gpu.fill(b.f32() + 7, 2.5f, n - 11);  // odd offset and length
    back = to_host(gpu, b);
    bool ok = true;
    for (size_t i = 0; i < n; ++i) ok &= back[i] == ((i >= 7 && i < n - 4) ? 2.5f : host[i]);
    EXPECT_TRUE(ok, "fill wrote outside [7, n-4) or missed an element");
    void* p = a.storage->data;
    a = Tensor();  // back to the cache
    Tensor c = mveb::empty_tensor(gpu, {static_cast<int64_t>(n)});
    if (gpu.device() == mveb::Device::CUDA)
      EXPECT_TRUE(c.storage->data == p, "a block of the same size class is reused");
  }
  EXPECT_TRUE(gpu.memory().bytes == before.bytes && gpu.memory().buffers == before.buffers);
  gpu.synchronize();
}

TEST("cuda: gemm, all transposes, alpha/beta, padded leading dimensions, split-K") {
  struct Case {
    int M, N, K;
    float alpha, beta;
  };
  for (const Case& cs : {Case{37, 53, 71, 0.7f, 0.f}, Case{37, 53, 71, -1.3f, 0.3f}, Case{65, 1, 129, 1.f, 1.f},
                         Case{5, 7, 3001, 1.f, 0.f}, Case{129, 67, 2500, 0.5f, -0.5f},
                         // 128-wide tiles in M, N or both (the tile shape depends on M, N and the SM count)
                         Case{200, 150, 37, 1.f, 0.f}, Case{40, 300, 50, 0.9f, 0.2f}, Case{257, 20, 33, 1.f, 1.f}}) {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const int lda = (ta ? cs.M : cs.K) + 3, ldb = (tb ? cs.K : cs.N) + 2, ldc = cs.N + 5;
        const size_t a_rows = ta ? cs.K : cs.M, b_rows = tb ? cs.N : cs.K;
        std::ostringstream what;
        what << "gemm M=" << cs.M << " N=" << cs.N << " K=" << cs.K << " tA=" << ta << " tB=" << tb
             << " beta=" << cs.beta;
        compare(what.str(), [&](Backend& b) -> Outputs {
          Tensor A = input(b, a_rows * lda, 11), B = input(b, b_rows * ldb, 12);
          Tensor C = cs.beta == 0.f ? poisoned(b, cs.M * static_cast<size_t>(ldc)) : input(b, cs.M * static_cast<size_t>(ldc), 13);
          b.gemm(ta, tb, cs.M, cs.N, cs.K, cs.alpha, A.f32(), lda, B.f32(), ldb, cs.beta, C.f32(), ldc);
          // only the M x N window is defined (padding columns keep their old values / NaN)
          std::vector<float> all = to_host(b, C), window;
          for (int m = 0; m < cs.M; ++m)
            for (int n = 0; n < cs.N; ++n) window.push_back(all[static_cast<size_t>(m) * ldc + n]);
          return {window};
        }, 1e-5);
      }
  }
}

TEST("cuda: layouts nchw_to_nhwc and nhwc_to_nchw") {
  const int N = 3, C = 37, H = 7, W = 9;
  const size_t n = static_cast<size_t>(N) * C * H * W;
  compare("layouts", [&](Backend& b) -> Outputs {
    Tensor x = input(b, n, 21), y = poisoned(b, n), z = poisoned(b, n);
    b.nchw_to_nhwc(y.f32(), x.f32(), N, C, H, W);
    b.nhwc_to_nchw(z.f32(), x.f32(), N, C, H, W);
    return {to_host(b, y), to_host(b, z)};
  }, 0.0);
}

TEST("cuda: conv2d forward, backward data, backward weight (accumulates)") {
  const mveb::ConvShape shapes[] = {
      {2, 9, 11, 5, 7, 3, 3, 1, 1},   // 3x3 same
      {3, 13, 10, 3, 6, 7, 7, 2, 3},  // stem-like 7x7 stride 2
      {2, 9, 8, 6, 5, 1, 1, 2, 0},    // 1x1 stride-2 downsample
      {3, 7, 9, 13, 11, 1, 1, 1, 0},  // 1x1 stride 1: the plain-GEMM path
      {2, 8, 7, 4, 9, 3, 3, 2, 1},    // 3x3 stride 2
      {4, 31, 33, 3, 5, 3, 3, 1, 1},  // long reduction for the weight gradient (split-K)
  };
  for (const mveb::ConvShape& s : shapes) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
                 ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.K;
    std::ostringstream what;
    what << "conv N=" << s.N << " H=" << s.H << " W=" << s.W << " C=" << s.C << " K=" << s.K << " R=" << s.R
         << " stride=" << s.stride << " pad=" << s.pad;
    compare(what.str(), [&](Backend& b) -> Outputs {
      Tensor x = input(b, nx, 31), w = input(b, nw, 32), dy = input(b, ny, 33);
      Tensor y = poisoned(b, ny), dx = poisoned(b, nx), dw = input(b, nw, 34);
      b.conv2d_forward(y.f32(), x.f32(), w.f32(), s);
      b.conv2d_backward_data(dx.f32(), dy.f32(), w.f32(), s);
      b.conv2d_backward_weight(dw.f32(), dy.f32(), x.f32(), s);
      return {to_host(b, y), to_host(b, dx), to_host(b, dw)};
    }, 1e-5);
  }
}

TEST("cuda: conv2d_forward_stats + batch norm, conv2d_backward, batchnorm_conv_backward (fused on the CPU)") {
  // CUDA runs these through the op table's defaults (the separate ops); the CPU fuses them on the
  // pointwise shape (statistics per output chunk, one pass over dy, the norm's input gradient per chunk).
  const mveb::ConvShape shapes[] = {{3, 12, 11, 40, 72, 1, 1, 1, 0}, {2, 9, 10, 12, 16, 3, 3, 1, 1}};
  for (const mveb::ConvShape& s : shapes)
    for (int variant = 0; variant < 4; ++variant) {
      const bool relu = variant & 1, res = variant & 2;
      const int M = s.N * s.P() * s.Q(), C = s.K;
      const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
                   ny = static_cast<size_t>(M) * C;
      std::ostringstream what;
      what << "fused conv ops N=" << s.N << " H=" << s.H << " C=" << s.C << " K=" << s.K << " R=" << s.R
           << " relu=" << relu << " residual=" << res;
      compare(what.str(), [&](Backend& b) -> Outputs {
        Tensor x = input(b, nx, 91), w = input(b, nw, 92, 0.f, 0.2f), gamma = input(b, C, 93, 0.5f, 1.5f),
               beta = input(b, C, 94), rm = input(b, C, 95), rv = input(b, C, 96, 0.5f, 2.f);
        Tensor y = poisoned(b, ny), stats = poisoned(b, 4 * static_cast<size_t>(C)), ybn = poisoned(b, ny),
               mean = poisoned(b, C), invstd = poisoned(b, C);
        const size_t mask_slots = (mveb::relu_mask_bytes(M, C) + 3) / 4;
        Tensor mask = poisoned(b, mask_slots);
        double* st = reinterpret_cast<double*>(stats.f32());
        const bool fused = b.conv2d_forward_stats(y.f32(), st, x.f32(), w.f32(), s);
        b.batchnorm_forward_train(ybn.f32(), reinterpret_cast<uint8_t*>(mask.f32()), mean.f32(), invstd.f32(),
                                  rm.f32(), rv.f32(), y.f32(), gamma.f32(), beta.f32(), nullptr, relu, M, C, 0.1f,
                                  1e-5f, fused ? st : nullptr);
        // backward: both passes of the conv, then a batch norm and its conv together (the ReLU mask
        // from the host, the same on both backends)
        Tensor dy = input(b, ny, 97), dw = input(b, nw, 98), dx = poisoned(b, nx);
        Tensor bmask = from_host(b, relu_mask_of(mtest::random_vector(ny, 102, -1.f, 1.f), M, C));
        b.conv2d_backward(dw.f32(), dx.f32(), dy.f32(), x.f32(), w.f32(), s, false);
        Tensor dw2 = input(b, nw, 98), dx2 = input(b, nx, 99), dg = input(b, C, 100), db = input(b, C, 101),
               dres = poisoned(b, ny), scratch = poisoned(b, ny);
        b.batchnorm_conv_backward(res ? dres.f32() : nullptr, dg.f32(), db.f32(), dy.f32(),
                                  relu ? reinterpret_cast<const uint8_t*>(bmask.f32()) : nullptr, y.f32(), gamma.f32(),
                                  mean.f32(), invstd.f32(), relu, true, dw2.f32(), dx2.f32(), x.f32(), w.f32(), s, true,
                                  scratch.f32());
        Outputs out{to_host(b, y),  to_host(b, ybn), to_host(b, mean), to_host(b, invstd), to_host(b, rv),
                    to_host(b, dw), to_host(b, dx),  to_host(b, dw2),  to_host(b, dx2),    to_host(b, dg),
                    to_host(b, db)};
        if (res) out.push_back(to_host(b, dres));
        return out;
      }, 2e-5);
    }
}

TEST("cuda: conv2d rejects a filter larger than the padded input with E_SHAPE") {
  Backend& gpu = cuda_or_skip();
  mveb::ConvShape s{1, 2, 2, 1, 1, 5, 5, 1, 0};
  EXPECT_THROWS_CODE(gpu.conv2d_forward(nullptr, nullptr, nullptr, s), "E_SHAPE");
}

TEST("cuda: batchnorm forward train and eval, with and without residual and ReLU") {
  const int M = 301, C = 37;
  const size_t n = static_cast<size_t>(M) * C;
  for (int relu = 0; relu < 2; ++relu)
    for (int res = 0; res < 2; ++res) {
      std::string what = std::string("bn relu=") + (relu ? "1" : "0") + " residual=" + (res ? "1" : "0");
      compare(what, [&](Backend& b) -> Outputs {
        // offset inputs (mean ~3, spread 2) so a one-pass variance would lose digits
        Tensor x = input(b, n, 41, 2.f, 4.f), gamma = input(b, C, 42, 0.5f, 1.5f), beta = input(b, C, 43);
        Tensor residual = input(b, n, 44);
        Tensor rm = input(b, C, 45), rv = input(b, C, 46, 0.5f, 2.f);
        Tensor y = poisoned(b, n), mean = poisoned(b, C), invstd = poisoned(b, C), ye = poisoned(b, n);
        const size_t mask_bytes = mveb::relu_mask_bytes(M, C);
        Tensor mask = poisoned(b, (mask_bytes + 3) / 4), mask_e = poisoned(b, (mask_bytes + 3) / 4);
        b.batchnorm_forward_train(y.f32(), reinterpret_cast<uint8_t*>(mask.f32()), mean.f32(), invstd.f32(), rm.f32(),
                                  rv.f32(), x.f32(), gamma.f32(), beta.f32(), res ? residual.f32() : nullptr, relu, M,
                                  C, 0.1f, 1e-5f, nullptr);
        b.batchnorm_forward_eval(ye.f32(), reinterpret_cast<uint8_t*>(mask_e.f32()), x.f32(), gamma.f32(), beta.f32(),
                                 rm.f32(), rv.f32(), res ? residual.f32() : nullptr, relu, M, C, 1e-5f);
        Outputs out{to_host(b, y), to_host(b, mean), to_host(b, invstd), to_host(b, rm), to_host(b, rv), to_host(b, ye)};
        if (relu) out.push_back({mask_mismatches(b, mask, out[0], M, C), mask_mismatches(b, mask_e, out[5], M, C)});
        return out;
      }, 1e-5);
    }
}

TEST("cuda: batchnorm backward, train and eval, residual and ReLU, dgamma/dbeta accumulate") {
  const int M = 293, C = 41;
  const size_t n = static_cast<size_t>(M) * C;
  for (int train = 0; train < 2; ++train)
    for (int relu = 0; relu < 2; ++relu)
      for (int res = 0; res < 2; ++res) {
        std::string what = std::string("bn backward train=") + (train ? "1" : "0") + " relu=" + (relu ? "1" : "0") +
                           " dresidual=" + (res ? "1" : "0");
        compare(what, [&](Backend& b) -> Outputs {
          Tensor x = input(b, n, 51, -1.f, 3.f), dy = input(b, n, 53);
          Tensor mask = from_host(b, relu_mask_of(mtest::random_vector(n, 52, -1.f, 1.f), M, C));
          Tensor gamma = input(b, C, 54, 0.5f, 1.5f), mean = input(b, C, 55, 0.5f, 1.5f), invstd = input(b, C, 56, 0.5f, 2.f);
          Tensor dx = poisoned(b, n), dres = poisoned(b, n), dgamma = input(b, C, 57), dbeta = input(b, C, 58);
          b.batchnorm_backward(dx.f32(), res ? dres.f32() : nullptr, dgamma.f32(), dbeta.f32(), dy.f32(),
                               relu ? reinterpret_cast<const uint8_t*>(mask.f32()) : nullptr, x.f32(), gamma.f32(),
                               mean.f32(), invstd.f32(), relu, train, M, C);
          Outputs out{to_host(b, dx), to_host(b, dgamma), to_host(b, dbeta)};
          if (res) out.push_back(to_host(b, dres));
          return out;
        }, 1e-5);
      }
}

TEST("cuda: relu, add, axpy") {
  const size_t n = 10007;
  compare("elementwise", [&](Backend& b) -> Outputs {
    Tensor x = input(b, n, 61), a = input(b, n, 62), dy = input(b, n, 63);
    Tensor y = poisoned(b, n), dx = poisoned(b, n), s = poisoned(b, n), acc = input(b, n, 64);
    b.relu_forward(y.f32(), x.f32(), n);
    b.relu_backward(dx.f32(), dy.f32(), x.f32(), n);  // x as the forward output: mask x > 0
    b.add(s.f32(), x.f32(), a.f32(), n);
    b.axpy(acc.f32(), -0.37f, a.f32(), n);
    return {to_host(b, y), to_host(b, dx), to_host(b, s), to_host(b, acc)};
  }, 1e-6);
}

TEST("cuda: maxpool2d forward (values and argmax) and backward") {
  const mveb::PoolShape shapes[] = {{2, 11, 9, 5, 3, 2, 1}, {3, 8, 8, 7, 2, 2, 0}, {1, 10, 13, 3, 3, 1, 1}};
  for (const mveb::PoolShape& s : shapes) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
    std::ostringstream what;
    what << "maxpool H=" << s.H << " W=" << s.W << " k=" << s.kernel << " stride=" << s.stride << " pad=" << s.pad;
    compare(what.str(), [&](Backend& b) -> Outputs {
      Tensor x = input(b, nx, 71), dy = input(b, ny, 72), y = poisoned(b, ny), dx = poisoned(b, nx);
      Tensor argmax = mveb::empty_tensor(b, {static_cast<int64_t>(ny)}, mveb::DType::Int32);
      std::vector<int32_t> bad(ny, -12345);
      b.upload(argmax.i32(), bad.data(), ny * sizeof(int32_t));
      b.maxpool2d_forward(y.f32(), argmax.i32(), x.f32(), s);
      b.maxpool2d_backward(dx.f32(), dy.f32(), argmax.i32(), s);
      return {to_host(b, y), int_to_host(b, argmax), to_host(b, dx)};
    }, {0.0, 0.0, 1e-6});  // values and argmax exactly
  }
}

// Ties and NaNs (values from {-2..1}, NaNs, windows with two NaNs in a channel): the argmax the same
// on both backends (first maximum in window order; a NaN wins, the last one, as PyTorch).
TEST("cuda: maxpool2d argmax with ties and NaN") {
  const mveb::PoolShape s{2, 9, 8, 6, 3, 2, 1};
  const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
  std::vector<float> xs = mtest::random_vector(nx, 73, -1.f, 1.f);
  for (size_t i = 0; i < nx; ++i) xs[i] = i % 23 == 5 ? std::numeric_limits<float>::quiet_NaN() : std::floor(xs[i] * 1.5f);
  for (int w = 1; w <= 2; ++w) xs[(static_cast<size_t>(s.W) + w) * s.C + 3] = std::numeric_limits<float>::quiet_NaN();
  compare("maxpool argmax, ties and NaN", [&](Backend& b) -> Outputs {
    Tensor x = from_host(b, xs), y = poisoned(b, ny);
    Tensor argmax = mveb::empty_tensor(b, {static_cast<int64_t>(ny)}, mveb::DType::Int32);
    b.maxpool2d_forward(y.f32(), argmax.i32(), x.f32(), s);
    return {int_to_host(b, argmax)};
  }, {0.0});
}

TEST("cuda: global average pool forward and backward") {
  const int N = 3, HW = 49, C = 37;
  compare("global avgpool", [&](Backend& b) -> Outputs {
    const size_t nx = static_cast<size_t>(N) * HW * C, ny = static_cast<size_t>(N) * C;
    Tensor x = input(b, nx, 81), dy = input(b, ny, 82), y = poisoned(b, ny), dx = poisoned(b, nx);
    b.global_avgpool_forward(y.f32(), x.f32(), N, HW, C);
    b.global_avgpool_backward(dx.f32(), dy.f32(), N, HW, C);
    return {to_host(b, y), to_host(b, dx)};
  }, 1e-6);
}

TEST("cuda: add_bias_rows and sum_rows (accumulates)") {
  const int M = 517, N = 37;
  compare("bias rows", [&](Backend& b) -> Outputs {
    const size_t n = static_cast<size_t>(M) * N;
    Tensor y = input(b, n, 91), bias = input(b, N, 92), dy = input(b, n, 93), db = input(b, N, 94);
    b.add_bias_rows(y.f32(), bias.f32(), M, N);
    b.sum_rows(db.f32(), dy.f32(), M, N);
    return {to_host(b, y), to_host(b, db)};
  }, 1e-6);
}

TEST("cuda: sgd_step, lars_step (adapt on and off), ema_update") {
  const size_t n = 10007;
  compare("optimisers", [&](Backend& b) -> Outputs {
    Tensor p1 = input(b, n, 101), m1 = input(b, n, 102), g = input(b, n, 103);
    Tensor p2 = input(b, n, 104), m2 = input(b, n, 105), p3 = input(b, n, 106), m3 = input(b, n, 107);
    Tensor t = input(b, n, 108), online = input(b, n, 109);
    for (int step = 0; step < 3; ++step) {
      b.sgd_step(p1.f32(), m1.f32(), g.f32(), n, 0.1f, 0.9f, 1e-4f);
      b.lars_step(p2.f32(), m2.f32(), g.f32(), n, 0.3f, 0.9f, 1e-6f, 0.001f, true);
      b.lars_step(p3.f32(), m3.f32(), g.f32(), n, 0.3f, 0.9f, 0.f, 0.001f, false);
      b.ema_update(t.f32(), online.f32(), n, 0.996f);
    }
    return {to_host(b, p1), to_host(b, m1), to_host(b, p2), to_host(b, m2), to_host(b, p3), to_host(b, m3),
            to_host(b, t)};
  }, 1e-6);
}

TEST("cuda: all_finite and sum_squares") {
  Backend& gpu = cuda_or_skip();
  for (size_t n : {size_t(1), size_t(1000), size_t(1000003)}) {
    std::vector<float> v = mtest::random_vector(n, 111);
    Tensor a = from_host(gpu, v), c = from_host(cpu(), v);
    EXPECT_TRUE(gpu.all_finite(a.f32(), n), "n=" << n);
    double s_gpu = gpu.sum_squares(a.f32(), n), s_cpu = cpu().sum_squares(c.f32(), n);
    EXPECT_REL(mtest::rel_error(&s_gpu, &s_cpu, 1), 1e-6, "sum_squares n=" << n);  // the CPU sums blocks of 1024 in float
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      std::vector<float> w = v;
      w[n - 1 - n / 3] = bad;
      Tensor t = from_host(gpu, w);
      EXPECT_TRUE(!gpu.all_finite(t.f32(), n), "n=" << n << " bad=" << bad);
    }
  }
}

TEST("cuda: l2_normalize_rows forward and backward") {
  const int N = 37, D = 129;
  compare("l2 normalize", [&](Backend& b) -> Outputs {
    const size_t n = static_cast<size_t>(N) * D;
    Tensor x = input(b, n, 121), dy = input(b, n, 122), y = poisoned(b, n), norms = poisoned(b, N), dx = poisoned(b, n);
    b.l2_normalize_rows_forward(y.f32(), norms.f32(), x.f32(), N, D, 1e-12f);
    b.l2_normalize_rows_backward(dx.f32(), dy.f32(), y.f32(), norms.f32(), N, D, 1e-12f);
    return {to_host(b, y), to_host(b, norms), to_host(b, dx)};
  }, 1e-5);
}

TEST("cuda: vmf_score matches the spec's worked example 1 (float64 fixture)") {
  Backend& gpu = cuda_or_skip();
  // mveb-spec.md section 9, example 1: tau = 0.4, cond(K + 0.01 I) = 6.11398 (exact, 2-norm)
  const std::vector<float> z = {1, 0, 0, 0, 1, 0, 0.6f, 0.8f, 0, 0, 0.6f, 0.8f};
  const double expect[12] = {-2.573913163006, 1.358728884977,  0.129525186122,  2.529171754952,
                             -3.284534300240, 1.309914099718,  -4.059658329842, -2.802316204601,
                             0.248287443958,  0.386917728930,  -0.722649518282, -4.001896273159};
  Tensor zt = from_host(gpu, z), score = poisoned(gpu, 12);
  mveb::VmfInfo info = gpu.vmf_score(score.f32(), zt.f32(), 4, 3, 0.01f, 0.1f);
  std::vector<float> got = to_host(gpu, score);
  EXPECT_REL(mtest::rel_error(got.data(), expect, 12), 1e-5, "score vs fixture");
  EXPECT_TRUE(std::fabs(info.width - 0.4f) < 1e-6f && std::fabs(info.width_raw - 0.4f) < 1e-6f, info.width);
  EXPECT_TRUE(info.condition > 1 && std::isfinite(info.condition), info.condition);
}

TEST("cuda: vmf_score vs the CPU backend (width, clamp, score)") {
  const int N = 37, D = 19;
  for (float min_width : {0.1f, 2.0f}) {  // 2.0 forces the clamp
    std::string what = "vmf min_width=" + std::to_string(min_width);
    compare(what, [&](Backend& b) -> Outputs {
      std::vector<float> z = mtest::random_vector(static_cast<size_t>(N) * D, 131);
      for (int i = 0; i < N; ++i) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += double(z[i * D + d]) * z[i * D + d];
        for (int d = 0; d < D; ++d) z[i * D + d] = static_cast<float>(z[i * D + d] / std::sqrt(s));
      }
      Tensor zt = from_host(b, z), score = poisoned(b, static_cast<size_t>(N) * D);
      mveb::VmfInfo info = b.vmf_score(score.f32(), zt.f32(), N, D, 0.01f, min_width);
      return {to_host(b, score), {info.width}, {info.width_raw}, {static_cast<float>(info.condition)}};
    }, 1e-4);
  }
}

#endif  // MVEB_WITH_CUDA
