// test_kernels.cpp: every CPU kernel of the op table (except the loss helper's vmf_score and
// l2_normalize_rows_*) against the float64 reference (reference.h) on random odd sizes, outputs
// poisoned with NaN first, under every ISA path the CPU has (scalar, AVX2, AVX-512: CpuBackend with
// force_isa); and every reference backward against central finite differences in float64.
// Run: mveb_native_tests "kernels:"
#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "cpu/cpu_backend.h"
#include "harness.h"
#include "reference.h"

namespace {

using mveb::ConvShape;
using mveb::CpuBackend;
using mveb::Isa;
using mveb::PoolShape;
using Vec = std::vector<double>;
using FVec = std::vector<float>;

const float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kTol = 1e-5;

// One backend per ISA the CPU supports, each with 2 threads so the threaded paths run.
std::vector<std::unique_ptr<CpuBackend>> isa_backends() {
  std::vector<std::unique_ptr<CpuBackend>> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    std::unique_ptr<CpuBackend> b(new CpuBackend(2));
    b->force_isa(isa);
    if (b->isa() == isa) out.push_back(std::move(b));
  }
  return out;
}

// Matmul precision "high" on the AMX path (gemm_amx.cpp), 1-3 threads; empty without AMX. Its
// bf16x3 products lose ~2^-17 per product: relative errors ~4e-6, hence its own tolerance.
constexpr double kAmxTol = 2e-5;
std::vector<std::unique_ptr<CpuBackend>> amx_backends() {
  std::vector<std::unique_ptr<CpuBackend>> out;
  for (int threads = 1; threads <= 3; ++threads) {
    std::unique_ptr<CpuBackend> b(new CpuBackend(threads));
    b->set_matmul_precision(mveb::MatmulPrecision::High);
    if (b->amx()) out.push_back(std::move(b));
  }
  return out;
}

Vec to_d(const FVec& v) { return Vec(v.begin(), v.end()); }
FVec poison(size_t n) { return FVec(n, kNaN); }
FVec rnd(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) { return mtest::random_vector(n, seed, lo, hi); }
std::string tag(CpuBackend& b) {
  return std::string(" [") + mveb::isa_name(b.isa()) + ", " + std::to_string(b.pool().size()) + " threads]";
}

// Relative error of the float result against the double reference.
double err(const FVec& a, const Vec& b) { return mtest::rel_error(a.data(), b.data(), a.size()); }

// ---- finite differences in float64: d/dv sum(dy * f(v)) ----
template <typename F>
Vec numeric_grad(Vec v, const Vec& dy, F f) {
  const double h = 1e-6;
  Vec g(v.size()), out(dy.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    f(v, out);
    double lp = 0;
    for (size_t j = 0; j < dy.size(); ++j) lp += dy[j] * out[j];
    v[i] = keep - h;
    f(v, out);
    double lm = 0;
    for (size_t j = 0; j < dy.size(); ++j) lm += dy[j] * out[j];
    v[i] = keep;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

/** One GEMM case on every backend against the float64 reference: padded leading dimensions (pad[0..2]
 *  extra columns for A, B, C), alpha/beta from the case index, written part of C NaN-poisoned when
 *  beta = 0 (the padding columns must survive). */
template <class Backends>
void check_gemm_case(Backends& backends, int M, int N, int K, bool ta, bool tb, int case_index, const int pad[3], int seed,
                     double tol = kTol) {
  static const float ab[][2] = {{1.f, 0.f}, {-0.7f, 0.5f}, {1.3f, 1.f}};
  const float alpha = ab[case_index % 3][0], beta = ab[case_index % 3][1];
  const int lda = (ta ? M : K) + pad[0], ldb = (tb ? K : N) + pad[1], ldc = N + pad[2];
  const FVec A = rnd(static_cast<size_t>(ta ? K : M) * lda, seed + case_index);
  const FVec B = rnd(static_cast<size_t>(tb ? N : K) * ldb, seed + 1000 + case_index);
  const FVec C0 = rnd(static_cast<size_t>(M) * ldc, seed + 2000 + case_index);
  Vec ref = to_d(C0);
  const Vec Ad = to_d(A), Bd = to_d(B);
  ref::gemm(ta, tb, M, N, K, alpha, Ad.data(), lda, Bd.data(), ldb, beta, ref.data(), ldc);
  for (auto& b : backends) {
    FVec C = C0;
    if (beta == 0.f)
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) C[static_cast<size_t>(i) * ldc + j] = kNaN;
    b->gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
    EXPECT_REL(err(C, ref), tol,
               "gemm M=" << M << " N=" << N << " K=" << K << " tA=" << ta << " tB=" << tb << " alpha=" << alpha
                         << " beta=" << beta << tag(*b));
  }
}

}  // namespace

// ============================ GEMM ============================

TEST("kernels: gemm matches the reference for odd sizes, all transposes, alpha/beta, lda > K") {
  auto backends = isa_backends();
  const int sizes[] = {1, 3, 17, 67, 130};
  const int pad[3] = {3, 2, 1};
  int case_index = 0;
  for (int M : sizes)
    for (int N : sizes)
      for (int K : sizes)
        for (int t = 0; t < 4; ++t, ++case_index) check_gemm_case(backends, M, N, K, t & 1, t & 2, case_index, pad, 1000);
}

TEST("kernels: gemm beyond one cache block (K > KC, N > NC), M > 128, K = 0 and alpha = 0") {
  auto backends = isa_backends();
  for (auto& b : backends) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const int M = 13, N = 2101, K = 1301;  // several K blocks for every ISA, two column blocks
      const FVec A = rnd(static_cast<size_t>(M) * K, 11 + t), B = rnd(static_cast<size_t>(K) * N, 12 + t);
      Vec ref(static_cast<size_t>(M) * N);
      const Vec Ad = to_d(A), Bd = to_d(B);
      ref::gemm(ta, tb, M, N, K, 1.0, Ad.data(), ta ? M : K, Bd.data(), tb ? K : N, 0.0, ref.data(), N);
      FVec C = poison(static_cast<size_t>(M) * N);
      b->gemm(ta, tb, M, N, K, 1.f, A.data(), ta ? M : K, B.data(), tb ? K : N, 0.f, C.data(), N);
      EXPECT_REL(err(C, ref), kTol, "gemm big tA=" << ta << " tB=" << tb << tag(*b));
    }
    {  // more rows than the direct-B limit, several K blocks, long B rows
      const int M = 141, N = 1030, K = 700;
      const FVec A = rnd(static_cast<size_t>(M) * K, 21), B = rnd(static_cast<size_t>(K) * N, 22);
      Vec ref(static_cast<size_t>(M) * N);
      const Vec Ad = to_d(A), Bd = to_d(B);
      ref::gemm(false, false, M, N, K, 1.0, Ad.data(), K, Bd.data(), N, 0.0, ref.data(), N);
      FVec C = poison(static_cast<size_t>(M) * N);
      b->gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
      EXPECT_REL(err(C, ref), kTol, "gemm 141x1030x700" << tag(*b));
    }
    FVec C = poison(12);
    b->gemm(false, false, 3, 4, 0, 1.f, nullptr, 1, nullptr, 4, 0.f, C.data(), 4);
    for (float v : C) EXPECT_TRUE(v == 0.f, "K=0 beta=0 must assign zeros" << tag(*b));
    FVec C2(12, 2.f), A(6, kNaN), B(8, 1.f);
    b->gemm(false, false, 3, 4, 2, 0.f, A.data(), 2, B.data(), 4, 0.5f, C2.data(), 4);
    for (float v : C2) EXPECT_TRUE(v == 1.f, "alpha=0 scales C by beta" << tag(*b));
  }
}

TEST("kernels: gemm with tile rows outer (B block in L2): several K blocks accumulating, partial tiles") {
  // A direct kernel over a packed B block of at most 1 MB in at least 4 panels runs its tile rows
  // outer (gemm_run): K > KC gives several such blocks, each added to C (beta 1 after the first), with
  // partial row and column tiles; the transposes that read A packed take the other order.
  auto backends = isa_backends();
  const int pad[3] = {2, 1, 3};
  int case_index = 0;
  for (const auto& shape : {std::array<int, 3>{200, 200, 2100}, {259, 161, 1500}, {143, 130, 64}})
    for (int t = 0; t < 4; ++t, ++case_index) check_gemm_case(backends, shape[0], shape[1], shape[2], t & 1, t & 2, case_index, pad, 6000);
}

TEST("kernels: gemm with op(A) = A rows far apart (packed, not read in place), alpha, beta, partial panels") {
  // lda >= 2560 floats and N >= 1024: op(A) = A is packed (the ISA's packing routine) instead of read
  // in place by the direct kernel; several K blocks, a depth tail that is not a multiple of 16, partial
  // row and column panels.
  auto backends = isa_backends();
  const int pad[3] = {5, 3, 2};
  int case_index = 1;  // alpha -0.7, beta 0.5; then 1.3, 1
  for (const auto& mk : {std::pair<int, int>{141, 2560}, {29, 2701}})
    check_gemm_case(backends, mk.first, 1030, mk.second, false, false, case_index++, pad, 5000);
}

TEST("kernels: gemm few-row products (B packed on the fly), partial row/column tiles, K blocks, 1-3 threads") {
  // Shapes around the paths of gemm_run: M <= 128 with op(B) = B packs B as the first row panel reads
  // it (no copy for one panel), a last partial column panel, several K blocks (KC 1024 on AVX-512),
  // two column blocks (N > NC), N < 4M with op(A) = A (direct kernel instead), M just above 128, and
  // partial row panels written by the rows kernel or through the tile.
  const int shapes[][3] = {{1, 33, 1100}, {13, 96, 2050}, {14, 64, 1100}, {15, 97, 1037}, {29, 130, 700},
                           {64, 256, 1100}, {64, 200, 33},  {64, 64, 1100}, {100, 450, 300}, {127, 513, 1100},
                           {128, 600, 64},  {129, 700, 300}, {141, 1030, 1100}, {30, 2100, 100},
                           {150, 2090, 70}, {13, 40, 100}};
  std::vector<std::unique_ptr<CpuBackend>> backends;
  for (int threads = 1; threads <= 3; ++threads)
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
      std::unique_ptr<CpuBackend> b(new CpuBackend(threads));
      b->force_isa(isa);
      if (b->isa() == isa) backends.push_back(std::move(b));
    }
  const int pad[3] = {1, 3, 2};
  int case_index = 0;
  for (const auto& shape : shapes)
    for (int t = 0; t < 4; ++t, ++case_index) check_gemm_case(backends, shape[0], shape[1], shape[2], t & 1, t & 2, case_index, pad, 4000);
}

TEST("kernels: gemm amx (matmul precision high): odd sizes, all transposes, alpha/beta, several blocks, 1-3 threads") {
  // Shapes above amx_pays' threshold around gemm_amx's blocking (32 x 32 tiles, 32-deep steps, KC 256,
  // NC 512, MC 256): partial tiles in M, N and K, several K and column blocks, few rows (column
  // splits across threads), few columns.
  auto backends = amx_backends();
  if (backends.empty()) SKIP("no AMX here (CPUID or the kernel's tile permission)");
  const int shapes[][3] = {{33, 47, 1300}, {47, 129, 333}, {100, 129, 300}, {257, 65, 150}, {300, 530, 600},
                           {16, 600, 257}, {1000, 17, 130}, {64, 64, 1100}, {31, 1100, 97}};
  const int pad[3] = {3, 1, 2};
  int case_index = 0;
  for (const auto& shape : shapes)
    for (int t = 0; t < 4; ++t, ++case_index)
      check_gemm_case(backends, shape[0], shape[1], shape[2], t & 1, t & 2, case_index, pad, 7000, kAmxTol);
  // The AMX path did run: its error is far above the fp32 kernels' (~1e-7) on the same product.
  const int M = 200, N = 300, K = 500;
  const FVec A = rnd(static_cast<size_t>(M) * K, 71), B = rnd(static_cast<size_t>(K) * N, 72);
  Vec ref(static_cast<size_t>(M) * N);
  const Vec Ad = to_d(A), Bd = to_d(B);
  ref::gemm(false, false, M, N, K, 1.0, Ad.data(), K, Bd.data(), N, 0.0, ref.data(), N);
  FVec C(ref.size()), C32(ref.size());
  backends[0]->gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
  CpuBackend fp32(1);
  fp32.gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C32.data(), N);
  EXPECT_TRUE(err(C, ref) > 5 * err(C32, ref) && err(C, ref) > 1e-6,
              "high precision should have run on AMX: error " << err(C, ref) << " vs fp32 " << err(C32, ref));
}

TEST("kernels: gemm amx random shapes, with and without a pre-packed B (PackedB), 1-3 threads") {
  // 60 random products around the AMX blocking (32-wide panels and steps, KC 256, NC 1024): every
  // transpose, leading-dimension padding, alpha/beta, and op(B) pre-packed as the convolutions do
  // (which runs on AMX for any M, including M < 16).
  auto backends = amx_backends();
  if (backends.empty()) SKIP("no AMX here (CPUID or the kernel's tile permission)");
  uint64_t state = 12345;
  auto next = [&](int lo, int hi) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + static_cast<int>((state >> 33) % static_cast<uint64_t>(hi - lo + 1));
  };
  for (int c = 0; c < 60; ++c) {
    const bool pre = c % 2 == 1;
    const int M = next(1, 300), N = next(16, 1100), K = next(32, 600);
    const bool ta = pre ? false : next(0, 1), tb = next(0, 1);
    const int pad[3] = {next(0, 3), next(0, 3), next(0, 3)};
    if (!pre) {
      if (!mveb::gemm_detail::amx_pays(M, N, K)) continue;
      check_gemm_case(backends, M, N, K, ta, tb, c, pad, 9000, kAmxTol);
      continue;
    }
    const int lda = K + pad[0], ldb = (tb ? K : N) + pad[1], ldc = N + pad[2];
    const FVec A = rnd(static_cast<size_t>(M) * lda, 9100 + c), B = rnd(static_cast<size_t>(tb ? N : K) * ldb, 9200 + c);
    Vec ref(static_cast<size_t>(M) * ldc, 0.0);
    const Vec Ad = to_d(A), Bd = to_d(B);
    ref::gemm(false, tb, M, N, K, 1.0, Ad.data(), lda, Bd.data(), ldb, 0.0, ref.data(), ldc);
    for (auto& b : backends) {
      const mveb::gemm_detail::KernelInfo kern = b->gemm_kernel();
      const mveb::gemm_detail::PackedB packed(b->pool(), kern, tb, N, K, B.data(), ldb);
      EXPECT_TRUE(packed.amx, "PackedB should hold AMX panels");
      FVec C(ref.size(), 0.f);
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) C[static_cast<size_t>(i) * ldc + j] = kNaN;
      mveb::gemm_detail::gemm_run(b->pool(), kern, false, tb, M, N, K, 1.f, A.data(), lda, nullptr, 0, 0.f, C.data(),
                                  ldc, &packed);
      EXPECT_REL(err(C, ref), kAmxTol, "packed gemm M=" << M << " N=" << N << " K=" << K << " tB=" << tb << tag(*b));
    }
  }
}

TEST("kernels: gemm amx keeps non-finite inputs non-finite (NaN and Inf reach C), as fp32 does") {
  // The training step's all_finite check relies on it: an infinite x splits into hi = inf, lo = NaN.
  auto backends = amx_backends();
  if (backends.empty()) SKIP("no AMX here (CPUID or the kernel's tile permission)");
  const int M = 64, N = 96, K = 700;
  FVec A = rnd(static_cast<size_t>(M) * K, 81), B = rnd(static_cast<size_t>(K) * N, 82);
  A[5 * K + 17] = kNaN;
  A[40 * K + 300] = std::numeric_limits<float>::infinity();
  B[123 * N + 50] = -std::numeric_limits<float>::infinity();
  for (auto& b : backends) {
    FVec C(static_cast<size_t>(M) * N, 0.f);
    b->gemm(false, false, M, N, K, 1.f, A.data(), K, B.data(), N, 0.f, C.data(), N);
    int nonfinite_rows = 0, finite_elsewhere = 0;
    for (int i = 0; i < M; ++i) {
      bool row_nonfinite = true;
      for (int j = 0; j < N; ++j) {
        const float v = C[static_cast<size_t>(i) * N + j];
        const bool expect_bad = i == 5 || i == 40 || j == 50;
        if (expect_bad && std::isfinite(v)) row_nonfinite = false;
        if (!expect_bad && std::isfinite(v)) ++finite_elsewhere;
      }
      nonfinite_rows += (i == 5 || i == 40) && row_nonfinite;
    }
    EXPECT_TRUE(nonfinite_rows == 2, "rows with a NaN / Inf input must be non-finite" << tag(*b));
    EXPECT_TRUE(finite_elsewhere == (M - 2) * (N - 1), "the other entries stay finite" << tag(*b));
  }
}

TEST("kernels: gemm keeps its workspace between calls: growing sizes, and two threads calling one backend at once") {
  // Each product's result against the reference; the workspace's buffers are reused, grown (the
  // sizes go up and down) and, when two calls overlap, the second allocates its own.
  struct Case {
    int M, N, K;
    bool ta, tb;
  };
  const Case cases[] = {{20, 40, 30, false, false}, {300, 700, 1100, false, true}, {64, 256, 400, true, false},
                        {141, 2101, 90, true, true},  {5, 9, 3, false, false},     {400, 500, 1300, false, false}};
  std::vector<FVec> As, Bs;
  std::vector<Vec> refs;
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); ++c) {
    const Case& k = cases[c];
    As.push_back(rnd(static_cast<size_t>(k.M) * k.K, 7000 + c));
    Bs.push_back(rnd(static_cast<size_t>(k.K) * k.N, 8000 + c));
    refs.emplace_back(static_cast<size_t>(k.M) * k.N);
    const Vec Ad = to_d(As.back()), Bd = to_d(Bs.back());
    ref::gemm(k.ta, k.tb, k.M, k.N, k.K, 1.0, Ad.data(), k.ta ? k.M : k.K, Bd.data(), k.tb ? k.K : k.N, 0.0,
              refs.back().data(), k.N);
  }
  auto run = [&](CpuBackend& b, size_t c) {
    const Case& k = cases[c];
    FVec C = poison(static_cast<size_t>(k.M) * k.N);
    b.gemm(k.ta, k.tb, k.M, k.N, k.K, 1.f, As[c].data(), k.ta ? k.M : k.K, Bs[c].data(), k.tb ? k.K : k.N, 0.f,
           C.data(), k.N);
    return err(C, refs[c]);
  };
  const size_t n = sizeof(cases) / sizeof(cases[0]);
  for (auto& b : isa_backends())
    for (int rep = 0; rep < 2; ++rep)
      for (size_t c = 0; c < n; ++c)
        EXPECT_REL(run(*b, c), kTol, "gemm case " << c << " rep " << rep << tag(*b));
  CpuBackend shared(2);
  double worst[2] = {0, 0};
  std::thread other([&] {
    for (int rep = 0; rep < 3; ++rep)
      for (size_t c = 0; c < n; ++c) worst[1] = std::max(worst[1], run(shared, n - 1 - c));
  });
  for (int rep = 0; rep < 3; ++rep)
    for (size_t c = 0; c < n; ++c) worst[0] = std::max(worst[0], run(shared, c));
  other.join();
  EXPECT_REL(worst[0], kTol, "gemm from the main thread while another thread runs gemm on the same backend");
  EXPECT_REL(worst[1], kTol, "gemm from a second thread on the same backend");
}

TEST("kernels: gemm refuses bad arguments with E_SHAPE / E_ARG") {
  auto& b = static_cast<CpuBackend&>(mtest::runtime().cpu());
  float x[4] = {};
  EXPECT_THROWS_CODE(b.gemm(false, false, -1, 2, 2, 1.f, x, 2, x, 2, 0.f, x, 2), "E_SHAPE");
  EXPECT_THROWS_CODE(b.gemm(false, false, 2, 2, 3, 1.f, x, 2, x, 2, 0.f, x, 2), "E_ARG");
}

// ============================ layout ============================

TEST("kernels: layout NCHW <-> NHWC round trip matches the reference") {
  auto backends = isa_backends();
  const int N = 3, C = 37, H = 5, W = 9;
  const size_t n = static_cast<size_t>(N) * C * H * W;
  const FVec x = rnd(n, 5);
  Vec ref(n);
  const Vec xd = to_d(x);
  ref::nchw_to_nhwc(ref.data(), xd.data(), N, C, H, W);
  for (auto& b : backends) {
    FVec y = poison(n), back = poison(n);
    b->nchw_to_nhwc(y.data(), x.data(), N, C, H, W);
    EXPECT_TRUE(err(y, ref) == 0.0, "nchw_to_nhwc exact" << tag(*b));
    b->nhwc_to_nchw(back.data(), y.data(), N, C, H, W);
    EXPECT_TRUE(back == x, "nhwc_to_nchw inverts" << tag(*b));
  }
}

// ============================ convolution ============================

namespace {
std::vector<ConvShape> conv_cases() {
  std::vector<ConvShape> v;
  for (int R : {1, 3, 7})
    for (int stride : {1, 2})
      for (int pad : {0, 1, 3}) v.push_back(ConvShape{2, 11, 9, 5, 7, R, R, stride, pad});
  v.push_back(ConvShape{3, 7, 13, 3, 5, 3, 1, 1, 1});
  v.push_back(ConvShape{1, 9, 9, 17, 3, 1, 7, 2, 3});
  // pointwise backward weight: as dw^T = x^T dy (C <= 64 < K), and as dw = dy^T x (C >= K; C > 64)
  v.push_back(ConvShape{2, 6, 5, 19, 33, 1, 1, 1, 0});
  v.push_back(ConvShape{2, 6, 5, 33, 19, 1, 1, 1, 0});
  v.push_back(ConvShape{1, 5, 7, 65, 70, 1, 1, 1, 0});
  // pointwise with enough rows for conv2d_backward's fused pass: transposed weight product (C <= 64 <
  // K), narrow K, neither narrow
  v.push_back(ConvShape{3, 12, 11, 40, 72, 1, 1, 1, 0});
  v.push_back(ConvShape{2, 13, 12, 70, 36, 1, 1, 1, 0});
  v.push_back(ConvShape{2, 11, 12, 80, 96, 1, 1, 1, 0});
  // big enough for several cache-sized chunks per thread and several row bands per image
  v.push_back(ConvShape{3, 40, 37, 16, 9, 3, 3, 1, 1});
  v.push_back(ConvShape{2, 41, 39, 15, 7, 3, 3, 2, 1});
  // K <= 8 at stride 1 (the AVX-512 pair kernel, forward and backward data): several chunks with
  // line segments split between them (odd Q), 1-channel and odd-channel inputs, K < 8
  v.push_back(ConvShape{3, 40, 37, 8, 8, 3, 3, 1, 1});
  v.push_back(ConvShape{2, 29, 31, 1, 8, 3, 3, 1, 1});
  v.push_back(ConvShape{2, 17, 20, 11, 6, 5, 3, 1, 2});
  // too few rows for chunks: stride-1 backward data through the plain-GEMM path with the flipped filter
  v.push_back(ConvShape{1, 5, 6, 3, 4, 3, 3, 1, 1});
  v.push_back(ConvShape{1, 4, 4, 6, 5, 3, 3, 1, 2});
  // 3x3 stride 1 with >= 8 channels and more than 16 on one side (Winograd F(2x2, 3x3); up to 16 of
  // both take the direct kernels): odd and even outputs, pads 0, 1, 2
  v.push_back(ConvShape{2, 13, 11, 16, 17, 3, 3, 1, 0});
  v.push_back(ConvShape{2, 9, 10, 18, 16, 3, 3, 1, 2});
  v.push_back(ConvShape{3, 12, 7, 33, 17, 3, 3, 1, 1});
  v.push_back(ConvShape{2, 9, 8, 8, 20, 3, 3, 1, 1});
  // 16 channels each: the direct kernels (all three passes)
  v.push_back(ConvShape{2, 10, 9, 16, 16, 3, 3, 1, 1});
  // stems, C <= 4 and 16 < K <= 64: the wide direct forward on AVX-512 (K 64, and 40 / 17 with a
  // partial last vector), the GEMM paths elsewhere and for the backward passes
  v.push_back(ConvShape{2, 29, 31, 3, 64, 7, 7, 2, 3});
  v.push_back(ConvShape{3, 11, 13, 1, 40, 3, 3, 1, 1});
  v.push_back(ConvShape{2, 9, 10, 4, 17, 5, 3, 2, 2});
  // 32 <= C, K <= 512 with >= min(max(C, K), 128) 4x4 output tiles: Winograd F(4x4, 3x3) forward
  // and backward data, the weight gradient by F(2x2, 3x3) (too few tiles: use_winograd4_weight);
  // partial edge tiles (P, Q not multiples of 4), pads 1, 0, 2; then 256 whole tiles: the weight
  // gradient by F(4x4)
  v.push_back(ConvShape{2, 22, 21, 64, 65, 3, 3, 1, 1});
  v.push_back(ConvShape{6, 26, 23, 66, 64, 3, 3, 1, 0});
  v.push_back(ConvShape{4, 25, 26, 64, 64, 3, 3, 1, 2});
  v.push_back(ConvShape{16, 16, 16, 64, 64, 3, 3, 1, 1});
  // the same at 32-40 channels, and 128 whole tiles: the weight gradient by F(4x4) up to 256 channels
  v.push_back(ConvShape{4, 14, 13, 33, 40, 3, 3, 1, 1});
  v.push_back(ConvShape{16, 16, 16, 32, 32, 3, 3, 1, 1});
  v.push_back(ConvShape{8, 16, 16, 40, 33, 3, 3, 1, 1});
  // strided backward data with several images per GEMM (and a partial last group)
  v.push_back(ConvShape{5, 8, 8, 12, 20, 3, 3, 2, 1});
  // K > 128: backward weight in the col^T * dy orientation
  v.push_back(ConvShape{2, 12, 9, 5, 131, 3, 3, 1, 1});
  // backward weight's patch packing with C at least the panel width (C < panel width: the shapes above)
  v.push_back(ConvShape{2, 9, 8, 40, 24, 3, 3, 2, 1});
  v.push_back(ConvShape{2, 7, 6, 20, 130, 3, 3, 2, 1});
  return v;
}
std::string str(const ConvShape& s) {
  return "N" + std::to_string(s.N) + " H" + std::to_string(s.H) + " W" + std::to_string(s.W) + " C" +
         std::to_string(s.C) + " K" + std::to_string(s.K) + " R" + std::to_string(s.R) + " S" + std::to_string(s.S) +
         " st" + std::to_string(s.stride) + " pad" + std::to_string(s.pad);
}
}  // namespace

/** One conv shape on every backend against the float64 reference: forward, backward data (NaN-poisoned
 *  outputs), backward weight (accumulating into a random dw); with `add`, also conv2d_backward_data_add
 *  into a random dx. Inputs from seeds seed+1 .. seed+4. */
template <class Backends>
void check_conv_case(Backends& backends, const ConvShape& s, int seed, double tol, bool add) {
  const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
               ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.K;
  const FVec x = rnd(nx, seed + 1), w = rnd(nw, seed + 2), dy = rnd(ny, seed + 3), dw0 = rnd(nw, seed + 4);
  const Vec xd = to_d(x), wd = to_d(w), dyd = to_d(dy);
  Vec y_ref(ny), dx_ref(nx), dw_ref(nw);
  ref::conv2d_forward(y_ref.data(), xd.data(), wd.data(), s);
  ref::conv2d_backward_data(dx_ref.data(), dyd.data(), wd.data(), s);
  ref::conv2d_backward_weight(dw_ref.data(), dyd.data(), xd.data(), s);
  for (size_t i = 0; i < nw; ++i) dw_ref[i] += dw0[i];  // backward weight accumulates
  for (auto& b : backends) {
    // y and dx with a poisoned guard zone past their end: nothing may be written there
    constexpr size_t kGuard = 64;
    FVec y = poison(ny + kGuard), dx = poison(nx + kGuard), dw = dw0;
    b->conv2d_forward(y.data(), x.data(), w.data(), s);
    b->conv2d_backward_data(dx.data(), dy.data(), w.data(), s);
    b->conv2d_backward_weight(dw.data(), dy.data(), x.data(), s);
    for (size_t i = 0; i < kGuard; ++i) {
      EXPECT_TRUE(std::isnan(y[ny + i]), "conv forward wrote past y's end " << str(s) << tag(*b));
      EXPECT_TRUE(std::isnan(dx[nx + i]), "conv backward data wrote past dx's end " << str(s) << tag(*b));
    }
    y.resize(ny);
    dx.resize(nx);
    EXPECT_REL(err(y, y_ref), tol, "conv forward " << str(s) << tag(*b));
    EXPECT_REL(err(dx, dx_ref), tol, "conv backward data " << str(s) << tag(*b));
    EXPECT_REL(err(dw, dw_ref), tol, "conv backward weight " << str(s) << tag(*b));
    // both passes in one call (pointwise with enough rows: one fused pass over dy), and weight only
    FVec dx1 = poison(nx), dw1 = dw0, dw2 = dw0;
    b->conv2d_backward(dw1.data(), dx1.data(), dy.data(), x.data(), w.data(), s, false);
    b->conv2d_backward(dw2.data(), nullptr, dy.data(), x.data(), w.data(), s, false);
    EXPECT_REL(err(dx1, dx_ref), tol, "conv backward (both) data " << str(s) << tag(*b));
    EXPECT_REL(err(dw1, dw_ref), tol, "conv backward (both) weight " << str(s) << tag(*b));
    EXPECT_REL(err(dw2, dw_ref), tol, "conv backward (weight only) " << str(s) << tag(*b));
    if (!add) continue;
    FVec dx_acc = x;  // conv2d_backward_data_add: dx += (pointwise: GEMM beta 1; strided: scatter; else temp)
    b->conv2d_backward_data_add(dx_acc.data(), dy.data(), w.data(), s);
    Vec dx_acc_ref = dx_ref;
    for (size_t i = 0; i < nx; ++i) dx_acc_ref[i] += x[i];
    EXPECT_REL(err(dx_acc, dx_acc_ref), tol, "conv backward data add " << str(s) << tag(*b));
    FVec dx_acc1 = x, dw3 = dw0;
    b->conv2d_backward(dw3.data(), dx_acc1.data(), dy.data(), x.data(), w.data(), s, true);
    EXPECT_REL(err(dx_acc1, dx_acc_ref), tol, "conv backward (both, add) data " << str(s) << tag(*b));
    EXPECT_REL(err(dw3, dw_ref), tol, "conv backward (both, add) weight " << str(s) << tag(*b));
  }
}

TEST("kernels: conv2d forward / backward data (assign and add) / backward weight match the reference") {
  auto backends = isa_backends();
  backends.emplace_back(new CpuBackend(1));  // the single-thread and odd-thread-count paths
  backends.emplace_back(new CpuBackend(3));
  int seed = 100;
  for (const ConvShape& s : conv_cases()) {
    check_conv_case(backends, s, seed, kTol, true);
    seed += 4;
  }
}

// Winograd at 512 channels: F(4x4)'s error grows with the channel count (its transforms' coefficients
// up to 8 are summed over C), and from C K = 2^18 the weight gradient's tile sums are taken one matrix
// per task over all tiles (winograd_weight_partials). Shapes (3x3, stride 1, pad 1): N128 4x4 C512
// (128 tiles: F(4x4) forward, backward data and weight), N32 4x4 C512 (F(2x2) forward and weight),
// N32 6x6 C512 (F(4x4) with edge tiles), N3 10x9 C500 K530 (F(2x2) with an odd width, channel counts
// that are not multiples of the panels), against float64 sums at 400 sampled outputs of each pass (the
// full float64 reference would take ~10 s here); also at matmul precision high where the CPU has AMX
// (F(2x2) products on AMX from 256 channels).
TEST("kernels: conv2d by Winograd at 512 channels, sampled outputs against float64") {
  for (const ConvShape& s : {ConvShape{128, 4, 4, 512, 512, 3, 3, 1, 1}, ConvShape{32, 4, 4, 512, 512, 3, 3, 1, 1},
                             ConvShape{32, 6, 6, 512, 512, 3, 3, 1, 1}, ConvShape{3, 10, 9, 500, 530, 3, 3, 1, 1}}) {
    const size_t pix = static_cast<size_t>(s.N) * s.H * s.W;  // P = H and Q = W here
    const size_t nx = pix * s.C, ny = pix * s.K, nw = static_cast<size_t>(s.K) * 9 * s.C;
    const FVec x = rnd(nx, 951), w = rnd(nw, 952), dy = rnd(ny, 953), dw0 = rnd(nw, 955);
    auto X = [&](int n, int h, int ww, int c) { return static_cast<double>(x[((static_cast<size_t>(n) * s.H + h) * s.W + ww) * s.C + c]); };
    auto DY = [&](int n, int h, int ww, int k) { return static_cast<double>(dy[((static_cast<size_t>(n) * s.H + h) * s.W + ww) * s.K + k]); };
    auto Wt = [&](int k, int tap, int c) { return static_cast<double>(w[(static_cast<size_t>(k) * 9 + tap) * s.C + c]); };
    auto inside = [&](int h, int ww) { return h >= 0 && h < s.H && ww >= 0 && ww < s.W; };
    // sampled positions: (n, h, w, k) of y, (n, h, w, c) of dx, (k, tap, c) of dw
    std::mt19937 rng(954 + s.N + s.H + s.C);
    std::vector<size_t> ypicks(400), xpicks(400), wpicks(400);
    for (auto& i : ypicks) i = rng() % ny;
    for (auto& i : xpicks) i = rng() % nx;
    for (auto& i : wpicks) i = rng() % nw;
    // the pixel (n, h, w) of flat index i of an NHWC tensor with ch channels, and its channel
    auto at = [&](size_t i, int ch, int& n, int& h, int& ww) {
      const size_t p = i / ch;
      ww = static_cast<int>(p % s.W), h = static_cast<int>(p / s.W % s.H), n = static_cast<int>(p / s.W / s.H);
      return static_cast<int>(i % ch);
    };
    Vec y_ref, dx_ref, dw_ref;
    for (size_t i : ypicks) {
      int n, h, ww;
      const int k = at(i, s.K, n, h, ww);
      double y = 0;
      for (int tap = 0; tap < 9; ++tap)
        if (inside(h + tap / 3 - 1, ww + tap % 3 - 1))
          for (int c = 0; c < s.C; ++c) y += X(n, h + tap / 3 - 1, ww + tap % 3 - 1, c) * Wt(k, tap, c);
      y_ref.push_back(y);
    }
    for (size_t i : xpicks) {
      int n, h, ww;
      const int c = at(i, s.C, n, h, ww);
      double dx = 0;  // the output pixels whose tap reads (h, w)
      for (int tap = 0; tap < 9; ++tap)
        if (inside(h + 1 - tap / 3, ww + 1 - tap % 3))
          for (int k = 0; k < s.K; ++k) dx += DY(n, h + 1 - tap / 3, ww + 1 - tap % 3, k) * Wt(k, tap, c);
      dx_ref.push_back(dx);
    }
    for (size_t i : wpicks) {
      const int c = static_cast<int>(i % s.C), tap = static_cast<int>(i / s.C % 9), k = static_cast<int>(i / s.C / 9);
      double g = dw0[i];  // backward weight accumulates
      for (int n = 0; n < s.N; ++n)
        for (int p = 0; p < s.H; ++p)
          for (int q = 0; q < s.W; ++q)
            if (inside(p + tap / 3 - 1, q + tap % 3 - 1)) g += DY(n, p, q, k) * X(n, p + tap / 3 - 1, q + tap % 3 - 1, c);
      dw_ref.push_back(g);
    }
    auto check = [&](CpuBackend& b, double tol) {
      FVec y(ny), dx(nx), dw = dw0;
      b.conv2d_forward(y.data(), x.data(), w.data(), s);
      b.conv2d_backward_data(dx.data(), dy.data(), w.data(), s);
      b.conv2d_backward_weight(dw.data(), dy.data(), x.data(), s);
      FVec ys, dxs, dws;
      for (size_t i : ypicks) ys.push_back(y[i]);
      for (size_t i : xpicks) dxs.push_back(dx[i]);
      for (size_t i : wpicks) dws.push_back(dw[i]);
      EXPECT_REL(err(ys, y_ref), tol, "forward, sampled " << str(s) << tag(b));
      EXPECT_REL(err(dxs, dx_ref), tol, "backward data, sampled " << str(s) << tag(b));
      EXPECT_REL(err(dws, dw_ref), tol, "backward weight, sampled " << str(s) << tag(b));
    };
    for (auto& b : isa_backends()) check(*b, kTol);
    for (auto& b : amx_backends()) check(*b, kAmxTol);  // F(2x2) on AMX, the weight sums per matrix too
  }
}

TEST("kernels: conv2d with matmul precision high (AMX) on every conv path, within bf16x3 error") {
  // Shapes above amx_pays on each path: pointwise (plain GEMMs, depth-split weight gradient), 1x1
  // stride 2 and 3x3 stride 2 (im2col chunks on an AMX PackedB; backward data through the scatter
  // path's PackedB), 3x3 stride 1 by Winograd F(2x2) and F(4x4) (PackedB filter products, transposed
  // weight-gradient products), the 7x7/2 stem (depth 147: partial 32-deep steps) and strided
  // convolutions with K >= 256 (backward weight through the patch-chunk GEMM instead of the direct
  // micro-kernel); a narrow pointwise one (conv2d_backward's fused pass: dx on AMX, dw on fp32).
  auto backends = amx_backends();
  if (backends.empty()) SKIP("no AMX here (CPUID or the kernel's tile permission)");
  const ConvShape shapes[] = {{2, 14, 14, 96, 80, 1, 1, 1, 0}, {3, 15, 15, 64, 96, 1, 1, 2, 0},
                              {2, 15, 13, 48, 40, 3, 3, 2, 1}, {2, 14, 15, 40, 48, 3, 3, 1, 1},
                              {4, 16, 16, 64, 64, 3, 3, 1, 1}, {2, 33, 31, 3, 64, 7, 7, 2, 3}, {4, 8, 8, 32, 32, 3, 3, 1, 1},
                              {2, 9, 11, 40, 256, 3, 3, 2, 1}, {2, 12, 12, 48, 256, 1, 1, 2, 0},
                              {2, 14, 14, 48, 160, 1, 1, 1, 0}};
  int seed = 900;
  for (const ConvShape& s : shapes) {
    check_conv_case(backends, s, seed, kAmxTol, false);
    seed += 4;
  }
}

TEST("kernels: conv2d_forward_stats gives y and its per-channel mean and variance; batch norm takes them") {
  // Paths with per-task output chunks compute the statistics (pointwise, 1x1 / 3x3 / 7x7 strided im2col
  // chunks, the direct few-channel kernel at any size); Winograd and too-few-rows shapes return false. Inputs offset by +40 make the outputs'
  // means large against their spread (an unshifted E[y^2] - E[y]^2 would lose most digits).
  auto backends = isa_backends();
  backends.emplace_back(new CpuBackend(3));
  for (auto& b : amx_backends()) backends.push_back(std::move(b));
  struct Case {
    ConvShape s;
    bool fused;
  };
  const Case cases[] = {{{3, 11, 13, 19, 37, 1, 1, 1, 0}, true},  {{3, 26, 24, 70, 33, 1, 1, 2, 0}, true},
                        {{3, 25, 23, 9, 20, 3, 3, 2, 1}, true},   {{2, 23, 21, 3, 16, 7, 7, 2, 3}, true},
                        {{2, 12, 11, 16, 24, 3, 3, 1, 1}, false}, {{1, 5, 6, 20, 24, 1, 1, 1, 0}, false},
                        {{1, 5, 6, 8, 9, 1, 1, 1, 0}, true},      {{2, 14, 13, 8, 12, 3, 3, 1, 1}, true},
                        // 8 output channels (AVX-512 sums pairs of rows as rows of 16): 585 rows, a
                        // 512-row task and an odd one; 180 rows from 4 input channels
                        {{3, 15, 13, 8, 8, 3, 3, 1, 1}, true},    {{2, 9, 10, 4, 8, 3, 3, 1, 1}, true}};
  int seed = 700;
  for (const Case& cs : cases)
    for (float offset : {0.f, 40.f}) {
      const ConvShape& s = cs.s;
      const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
      const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
                   ny = static_cast<size_t>(rows) * s.K;
      const FVec x = rnd(nx, ++seed, offset - 1.f, offset + 1.f), w = rnd(nw, ++seed, 0.f, 0.1f);
      Vec y_ref(ny), stats_ref(static_cast<size_t>(2) * s.K, 0.0);
      ref::conv2d_forward(y_ref.data(), to_d(x).data(), to_d(w).data(), s);
      for (int k = 0; k < s.K; ++k) {  // two-pass float64 mean and biased variance
        double m = 0, v = 0;
        for (int64_t r = 0; r < rows; ++r) m += y_ref[r * s.K + k];
        m /= rows;
        for (int64_t r = 0; r < rows; ++r) v += (y_ref[r * s.K + k] - m) * (y_ref[r * s.K + k] - m);
        stats_ref[k] = m;
        stats_ref[s.K + k] = v / rows;
      }
      const std::string what = "conv stats " + str(s) + " offset " + std::to_string(offset);
      for (auto& b : backends) {
        const double tol = b->matmul_precision() == mveb::MatmulPrecision::High ? kAmxTol : kTol;
        FVec y = poison(ny);
        std::vector<double> stats(static_cast<size_t>(2) * s.K, kNaN);
        const bool fused = b->conv2d_forward_stats(y.data(), stats.data(), x.data(), w.data(), s);
        EXPECT_TRUE(fused == cs.fused, what << " fused " << fused << tag(*b));
        EXPECT_REL(err(y, y_ref), tol, what << " y" << tag(*b));
        if (!fused) continue;
        EXPECT_REL(mtest::rel_error(stats.data(), stats_ref.data(), s.K), tol, what << " mean" << tag(*b));
        // the variance against y's own (float) values: bf16x3 changes y itself by ~1e-5 of its mean
        Vec yd(y.begin(), y.end()), var_own(static_cast<size_t>(s.K));
        for (int k = 0; k < s.K; ++k) {
          double m = 0, v = 0;
          for (int64_t r = 0; r < rows; ++r) m += yd[r * s.K + k];
          m /= rows;
          for (int64_t r = 0; r < rows; ++r) v += (yd[r * s.K + k] - m) * (yd[r * s.K + k] - m);
          var_own[k] = v / rows;
        }
        EXPECT_REL(mtest::rel_error(stats.data() + s.K, var_own.data(), s.K), 1e-6, what << " variance" << tag(*b));
        // batch norm from these statistics = batch norm taking its own pass (same y)
        const int M = static_cast<int>(rows), C = s.K;
        const FVec gamma = rnd(C, ++seed, 0.5f, 1.5f), beta = rnd(C, ++seed);
        FVec out[2], sm[2], si[2], rm[2], rv[2];
        for (int i = 0; i < 2; ++i) {
          out[i] = poison(ny), sm[i] = poison(C), si[i] = poison(C), rm[i] = FVec(C, 0.f), rv[i] = FVec(C, 1.f);
          b->batchnorm_forward_train(out[i].data(), nullptr, sm[i].data(), si[i].data(), rm[i].data(), rv[i].data(),
                                     y.data(), gamma.data(), beta.data(), nullptr, false, M, C, 0.1f, 1e-5f,
                                     i ? stats.data() : nullptr);
        }
        // both against float64 batch norm of the same y: from the statistics at least as close as its own
        // pass (the offset cases amplify the mean's rounding by mean / spread ~ 100 in x - mean)
        Vec bn_ref(ny), mref(C), iref(C), rmref(C, 0.0), rvref(C, 1.0);
        ref::batchnorm_forward_train(bn_ref.data(), mref.data(), iref.data(), rmref.data(), rvref.data(), yd.data(),
                                     to_d(gamma).data(), to_d(beta).data(), nullptr, false, M, C, 0.1, 1e-5);
        const double own = err(out[0], bn_ref), from_stats = err(out[1], bn_ref);
        EXPECT_REL(from_stats, std::max(1e-6, 1.5 * own), what << " bn y from stats (own pass " << own << ")" << tag(*b));
        EXPECT_REL(err(si[1], iref), 1e-6, what << " bn invstd from stats" << tag(*b));
        EXPECT_REL(err(rv[1], rvref), 1e-6, what << " bn running var from stats" << tag(*b));
        EXPECT_REL(err(sm[1], mref), kTol, what << " bn mean from stats" << tag(*b));
      }
    }
}

TEST("kernels: batchnorm_conv_backward equals batchnorm_backward then conv2d_backward") {
  // Pointwise convs with enough rows take the fused pass (the norm's input gradient computed per
  // chunk, never written); others (too few rows, 3x3, no input gradient) the two ops through scratch.
  // bn_x is the convolution's output and mean its batch mean, as in a model; x is positive with a
  // mean of 8.7 times its spread, where a pass that took sums of products before centring would lose
  // digits (one that did, tried and dropped, benchmarks/RESULTS.md, was 20-30x the two ops' error on
  // dw against float64 before it shifted x). Both ways are checked against float64 as well.
  auto backends = isa_backends();
  backends.emplace_back(new CpuBackend(3));
  for (auto& b : amx_backends()) backends.push_back(std::move(b));
  const ConvShape shapes[] = {{3, 12, 11, 40, 72, 1, 1, 1, 0}, {2, 13, 12, 70, 36, 1, 1, 1, 0},
                              {2, 11, 12, 80, 96, 1, 1, 1, 0}, {1, 5, 6, 8, 9, 1, 1, 1, 0},
                              {2, 9, 10, 12, 16, 3, 3, 1, 1}};
  int seed = 800;
  for (const ConvShape& s : shapes)
    for (int variant = 0; variant < 16; ++variant) {
      const bool residual = variant & 1, relu = variant & 2, train = variant & 4, add = variant & 8;
      const int M = s.N * s.P() * s.Q(), C = s.K;
      const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
                   ny = static_cast<size_t>(M) * C;
      const FVec x = rnd(nx, ++seed, 2.f, 3.f), w = rnd(nw, ++seed), dy = rnd(ny, ++seed),
                 gamma = rnd(C, ++seed, 0.5f, 1.5f), invstd = rnd(C, ++seed, 0.5f, 2.f), dx0 = rnd(nx, ++seed);
      Vec bn_xd(ny);
      ref::conv2d_forward(bn_xd.data(), to_d(x).data(), to_d(w).data(), s);
      const FVec bn_x(bn_xd.begin(), bn_xd.end());
      FVec mean(static_cast<size_t>(C), 0.f);
      for (int c = 0; c < C; ++c) {
        double sum = 0;
        for (int m = 0; m < M; ++m) sum += bn_x[static_cast<size_t>(m) * C + c];
        mean[static_cast<size_t>(c)] = static_cast<float>(sum / M);
      }
      std::vector<uint8_t> mask(mveb::relu_mask_bytes(M, C));
      for (size_t i = 0; i < mask.size(); ++i) mask[i] = static_cast<uint8_t>(i * 37 + 11);
      const std::string what = "bn+conv backward " + str(s) + " variant " + std::to_string(variant);
      // float64 reference: the ReLU's output as 1 where the mask's bit is set, else 0
      Vec y01(ny), dz(ny), rdres(ny), rdg(C), rdb(C), rdx(nx), rdw(nw);
      const size_t mrow = mveb::relu_mask_row_bytes(C);
      for (int m = 0; m < M; ++m)
        for (int c = 0; c < C; ++c) y01[static_cast<size_t>(m) * C + c] = (mask[m * mrow + c / 8] >> (c % 8)) & 1;
      ref::batchnorm_backward(dz.data(), rdres.data(), rdg.data(), rdb.data(), to_d(dy).data(), y01.data(),
                              bn_xd.data(), to_d(gamma).data(), to_d(mean).data(), to_d(invstd).data(), relu, train, M, C);
      ref::conv2d_backward_data(rdx.data(), dz.data(), to_d(w).data(), s);
      ref::conv2d_backward_weight(rdw.data(), dz.data(), to_d(x).data(), s);
      for (size_t i = 0; i < nx; ++i) rdx[i] += add ? dx0[i] : 0.f;
      for (size_t i = 0; i < nw; ++i) rdw[i] += 0.5;
      for (int c = 0; c < C; ++c) rdg[c] += 0.25, rdb[c] -= 0.25;
      const Vec* refs[] = {&rdx, &rdw, &rdg, &rdb, &rdres};
      for (auto& b : backends) {
        const double tol = b->matmul_precision() == mveb::MatmulPrecision::High ? kAmxTol : kTol;
        FVec out[2][5];  // dx, dw, dgamma, dbeta, dresidual
        for (int fused = 0; fused < 2; ++fused) {
          FVec dx = add ? dx0 : poison(nx), dw(nw, 0.5f), dg(C, 0.25f), db(C, -0.25f), dres = poison(ny),
               scratch = poison(ny);
          if (fused) {
            b->batchnorm_conv_backward(residual ? dres.data() : nullptr, dg.data(), db.data(), dy.data(),
                                       relu ? mask.data() : nullptr, bn_x.data(), gamma.data(), mean.data(),
                                       invstd.data(), relu, train, dw.data(), dx.data(), x.data(), w.data(), s, add,
                                       scratch.data());
          } else {
            b->batchnorm_backward(scratch.data(), residual ? dres.data() : nullptr, dg.data(), db.data(), dy.data(),
                                  relu ? mask.data() : nullptr, bn_x.data(), gamma.data(), mean.data(), invstd.data(),
                                  relu, train, M, C);
            b->conv2d_backward(dw.data(), dx.data(), scratch.data(), x.data(), w.data(), s, add);
          }
          out[fused][0] = dx, out[fused][1] = dw, out[fused][2] = dg, out[fused][3] = db, out[fused][4] = dres;
        }
        const char* names[] = {"dx", "dw", "dgamma", "dbeta", "dresidual"};
        for (int o = 0; o < (residual ? 5 : 4); ++o) {
          // against float64: the fused pass at most 5x the two ops' error
          const double e0 = err(out[0][o], *refs[o]), e1 = err(out[1][o], *refs[o]);
          EXPECT_REL(e1, std::max(kTol / 10, 5 * e0), what << " " << names[o] << " against float64 (two ops: " << e0
                                                            << ")" << tag(*b));
          EXPECT_REL(mtest::rel_error(out[1][o].data(), out[0][o].data(), out[0][o].size()), tol,
                     what << " " << names[o] << tag(*b));
        }
        if (add) continue;
        // dx in dy's own buffer (the model's trunk gradient; with a residual gradient, the last pair of a
        // block): dy is consumed before dx is written
        FVec both(std::max(nx, ny), 0.f), dw(nw, 0.5f), dg(C, 0.25f), db(C, -0.25f), scratch = poison(ny),
            dres = poison(ny);
        std::copy(dy.begin(), dy.end(), both.begin());
        b->batchnorm_conv_backward(residual ? dres.data() : nullptr, dg.data(), db.data(), both.data(),
                                   relu ? mask.data() : nullptr, bn_x.data(), gamma.data(), mean.data(), invstd.data(),
                                   relu, train, dw.data(), both.data(), x.data(), w.data(), s, false, scratch.data());
        EXPECT_REL(mtest::rel_error(both.data(), out[0][0].data(), nx), tol, what << " dx over dy" << tag(*b));
        EXPECT_REL(err(dw, to_d(out[0][1])), tol, what << " dw (dx over dy)" << tag(*b));
        if (residual)
          EXPECT_REL(mtest::rel_error(dres.data(), out[0][4].data(), ny), tol, what << " dresidual (dx over dy)" << tag(*b));
      }
    }
}

TEST("kernels: conv2d refuses an empty output with E_SHAPE") {
  auto& b = mtest::runtime().cpu();
  float x[4] = {};
  EXPECT_THROWS_CODE(b.conv2d_forward(x, x, x, ConvShape{1, 2, 2, 1, 1, 5, 5, 1, 0}), "E_SHAPE");
  // a filter larger than the padded input with a stride: (2 - 3) / 2 + 1 rounds to 1 output row
  EXPECT_THROWS_CODE(b.conv2d_forward(x, x, x, ConvShape{1, 2, 2, 1, 1, 3, 3, 2, 0}), "E_SHAPE");
  EXPECT_THROWS_CODE(b.conv2d_backward_weight(x, x, x, ConvShape{1, 2, 2, 1, 1, 3, 3, 2, 0}), "E_SHAPE");
  int32_t arg[4] = {};
  EXPECT_THROWS_CODE(b.maxpool2d_forward(x, arg, x, mveb::PoolShape{1, 2, 2, 1, 3, 2, 0}), "E_SHAPE");
}

TEST("kernels: conv2d reference backward passes match finite differences") {
  for (const ConvShape& s : {ConvShape{2, 5, 4, 3, 2, 3, 3, 2, 1}, ConvShape{1, 4, 5, 2, 3, 1, 3, 1, 0}}) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
                 ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.K;
    const Vec x = to_d(rnd(nx, 1)), w = to_d(rnd(nw, 2)), dy = to_d(rnd(ny, 3));
    Vec dx(nx), dw(nw);
    ref::conv2d_backward_data(dx.data(), dy.data(), w.data(), s);
    ref::conv2d_backward_weight(dw.data(), dy.data(), x.data(), s);
    const Vec ndx = numeric_grad(x, dy, [&](const Vec& v, Vec& out) { ref::conv2d_forward(out.data(), v.data(), w.data(), s); });
    const Vec ndw = numeric_grad(w, dy, [&](const Vec& v, Vec& out) { ref::conv2d_forward(out.data(), x.data(), v.data(), s); });
    EXPECT_REL(mtest::rel_error(dx.data(), ndx.data(), nx), 1e-7, "conv dx vs FD " << str(s));
    EXPECT_REL(mtest::rel_error(dw.data(), ndw.data(), nw), 1e-7, "conv dw vs FD " << str(s));
  }
}

// ============================ batch norm ============================

TEST("kernels: batchnorm train/eval forward and backward, with and without residual and ReLU") {
  auto backends = isa_backends();
  const float momentum = 0.1f, eps = 1e-5f;
  int seed = 500;
  for (int M : {3, 36, 301})  // (M = 2 makes the train dx vanish up to eps: no relative test; 36: even, folds)
    for (int C : {1, 5, 8, 12, 64, 67})  // (64: whole vectors of every ISA, 67: with a channel tail; 5, 12: mask
                                          // bytes cut across vectors; 8: folded into rows of 16 on AVX-512)
      for (int variant = 0; variant < 8; ++variant) {
        const bool residual = variant & 1, relu = variant & 2, train = variant & 4;
        const size_t n = static_cast<size_t>(M) * C;
        const FVec x = rnd(n, ++seed, -2.f, 3.f), res = rnd(n, ++seed), dy = rnd(n, ++seed);
        const FVec gamma = rnd(C, ++seed, 0.5f, 1.5f), beta = rnd(C, ++seed), rm0 = rnd(C, ++seed),
                   rv0 = rnd(C, ++seed, 0.5f, 2.f), dg0 = rnd(C, ++seed), db0 = rnd(C, ++seed);
        const Vec xd = to_d(x), resd = to_d(res), dyd = to_d(dy), gd = to_d(gamma), bd = to_d(beta);
        Vec y_ref(n), mean_ref(C), invstd_ref(C), rm_ref = to_d(rm0), rv_ref = to_d(rv0);
        if (train) {
          ref::batchnorm_forward_train(y_ref.data(), mean_ref.data(), invstd_ref.data(), rm_ref.data(), rv_ref.data(),
                                       xd.data(), gd.data(), bd.data(), residual ? resd.data() : nullptr, relu, M, C,
                                       momentum, eps);
        } else {
          ref::batchnorm_forward_eval(y_ref.data(), xd.data(), gd.data(), bd.data(), rm_ref.data(), rv_ref.data(),
                                      residual ? resd.data() : nullptr, relu, M, C, eps);
          for (int c = 0; c < C; ++c) {
            mean_ref[c] = rm_ref[c];
            invstd_ref[c] = 1 / std::sqrt(rv_ref[c] + static_cast<double>(eps));
          }
        }
        Vec dx_ref(n), dres_ref(n), dg_ref(C), db_ref(C);
        ref::batchnorm_backward(dx_ref.data(), dres_ref.data(), dg_ref.data(), db_ref.data(), dyd.data(), y_ref.data(),
                                xd.data(), gd.data(), mean_ref.data(), invstd_ref.data(), relu, train, M, C);
        for (int c = 0; c < C; ++c) {
          dg_ref[c] += dg0[c];
          db_ref[c] += db0[c];
        }
        const std::string what = "bn M=" + std::to_string(M) + " C=" + std::to_string(C) + " residual=" +
                                 std::to_string(residual) + " relu=" + std::to_string(relu) + " train=" + std::to_string(train);
        for (auto& b : backends) {
          FVec y = poison(n), mean = poison(C), invstd = poison(C), rm = rm0, rv = rv0;
          std::vector<uint8_t> mask(mveb::relu_mask_bytes(M, C), 0xA5);  // poisoned: every bit must be written
          if (train) {
            b->batchnorm_forward_train(y.data(), mask.data(), mean.data(), invstd.data(), rm.data(), rv.data(), x.data(),
                                       gamma.data(), beta.data(), residual ? res.data() : nullptr, relu, M, C, momentum,
                                       eps, nullptr);
            EXPECT_REL(err(mean, mean_ref), kTol, what << " saved mean" << tag(*b));
            EXPECT_REL(err(invstd, invstd_ref), kTol, what << " saved invstd" << tag(*b));
            EXPECT_REL(err(rm, rm_ref), kTol, what << " running mean" << tag(*b));
            EXPECT_REL(err(rv, rv_ref), kTol, what << " running var" << tag(*b));
          } else {
            b->batchnorm_forward_eval(y.data(), mask.data(), x.data(), gamma.data(), beta.data(), rm.data(), rv.data(),
                                      residual ? res.data() : nullptr, relu, M, C, eps);
            FVec y_nomask = poison(n);  // inference: no mask (the model's eval forward)
            b->batchnorm_forward_eval(y_nomask.data(), nullptr, x.data(), gamma.data(), beta.data(), rm.data(), rv.data(),
                                      residual ? res.data() : nullptr, relu, M, C, eps);
            EXPECT_REL(err(y_nomask, y_ref), kTol, what << " y without mask" << tag(*b));
            for (int c = 0; c < C; ++c) {
              mean[c] = rm[c];
              invstd[c] = static_cast<float>(invstd_ref[c]);
            }
          }
          EXPECT_REL(err(y, y_ref), kTol, what << " y" << tag(*b));
          if (relu) {  // the mask is exactly y > 0, its rows' padding bits zero
            const size_t row = mveb::relu_mask_row_bytes(C);
            int wrong = 0;
            for (int m = 0; m < M; ++m)
              for (size_t c = 0; c < row * 8; ++c) {
                const bool bit = (mask[m * row + c / 8] >> (c % 8)) & 1;
                wrong += bit != (c < static_cast<size_t>(C) && y[m * C + c] > 0.f);
              }
            EXPECT_TRUE(wrong == 0, what << " relu mask: " << wrong << " wrong bits" << tag(*b));
          } else {
            EXPECT_TRUE(std::all_of(mask.begin(), mask.end(), [](uint8_t v) { return v == 0xA5; }),
                        what << " relu mask written without relu" << tag(*b));
          }
          FVec dx = poison(n), dres = poison(n), dg = dg0, db = db0;
          b->batchnorm_backward(dx.data(), residual ? dres.data() : nullptr, dg.data(), db.data(), dy.data(),
                                mask.data(), x.data(), gamma.data(), mean.data(), invstd.data(), relu, train, M, C);
          EXPECT_REL(err(dx, dx_ref), kTol, what << " dx" << tag(*b));
          if (residual) EXPECT_REL(err(dres, dres_ref), kTol, what << " dresidual" << tag(*b));
          EXPECT_REL(err(dg, dg_ref), kTol, what << " dgamma" << tag(*b));
          EXPECT_REL(err(db, db_ref), kTol, what << " dbeta" << tag(*b));
        }
      }
}

// ============================ streamed outputs ============================

namespace {
// n floats, 64-byte aligned (the streamed paths need aligned outputs), filled from v.
struct Aligned {
  explicit Aligned(const FVec& v)
      : n(v.size()), p(static_cast<float*>(std::aligned_alloc(64, (v.size() * 4 + 63) / 64 * 64)), &std::free) {
    std::copy(v.begin(), v.end(), p.get());
  }
  FVec vec() const { return FVec(p.get(), p.get() + n); }
  float* get() { return p.get(); }
  size_t n;
  std::unique_ptr<float, decltype(&std::free)> p;
};
}  // namespace

TEST("kernels: outputs streamed past the caches (non-temporal stores) equal the cached path bit for bit") {
  std::unique_ptr<CpuBackend> cached(new CpuBackend(2)), streamed(new CpuBackend(2));
  if (cached->isa() != Isa::Avx512) return;  // the streamed stores are AVX-512 code
  streamed->stream_bytes = 0;  // every eligible output streams
  // Winograd F(4x4) (K 64: whole vectors; backward data's output C 66: the fallback) and F(2x2).
  for (const ConvShape& s : {ConvShape{2, 22, 21, 64, 64, 3, 3, 1, 1}, ConvShape{2, 26, 23, 66, 64, 3, 3, 1, 0},
                             ConvShape{4, 9, 7, 16, 32, 3, 3, 1, 1}}) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * 9 * s.C,
                 ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.K;
    const FVec x = rnd(nx, 1), w = rnd(nw, 2), dy = rnd(ny, 3);
    Aligned y0(poison(ny)), y1(poison(ny)), dx0(poison(nx)), dx1(poison(nx));
    cached->conv2d_forward(y0.get(), x.data(), w.data(), s);
    streamed->conv2d_forward(y1.get(), x.data(), w.data(), s);
    cached->conv2d_backward_data(dx0.get(), dy.data(), w.data(), s);
    streamed->conv2d_backward_data(dx1.get(), dy.data(), w.data(), s);
    EXPECT_TRUE(y0.vec() == y1.vec(), "streamed conv forward " << str(s));
    EXPECT_TRUE(dx0.vec() == dx1.vec(), "streamed conv backward data " << str(s));
  }
  // Batch norm y and dx, every variant; C 64 streams, C 67 falls back.
  for (int C : {64, 67})
    for (int variant = 0; variant < 8; ++variant) {
      const bool residual = variant & 1, relu = variant & 2, train = variant & 4;
      const int M = 301;
      const size_t n = static_cast<size_t>(M) * C;
      const FVec x = rnd(n, 10, -2.f, 3.f), res = rnd(n, 11), dy = rnd(n, 12), gamma = rnd(C, 13, 0.5f, 1.5f),
                 beta = rnd(C, 14), rv = rnd(C, 15, 0.5f, 2.f);
      Aligned y[2] = {Aligned(poison(n)), Aligned(poison(n))}, dx[2] = {Aligned(poison(n)), Aligned(poison(n))},
              dres[2] = {Aligned(poison(n)), Aligned(poison(n))};
      int i = 0;
      for (CpuBackend* b : {cached.get(), streamed.get()}) {
        FVec mean(C), invstd(C), rm(C, 0.f), rvar = rv, dg(C, 0.f), db(C, 0.f);
        std::vector<uint8_t> mask(mveb::relu_mask_bytes(M, C));
        if (train) {
          b->batchnorm_forward_train(y[i].get(), mask.data(), mean.data(), invstd.data(), rm.data(), rvar.data(),
                                     x.data(), gamma.data(), beta.data(), residual ? res.data() : nullptr, relu, M, C,
                                     0.1f, 1e-5f, nullptr);
        } else {
          b->batchnorm_forward_eval(y[i].get(), mask.data(), x.data(), gamma.data(), beta.data(), rm.data(),
                                    rvar.data(), residual ? res.data() : nullptr, relu, M, C, 1e-5f);
          for (int c = 0; c < C; ++c) invstd[c] = 1.f / std::sqrt(rvar[c] + 1e-5f);
        }
        b->batchnorm_backward(dx[i].get(), residual ? dres[i].get() : nullptr, dg.data(), db.data(), dy.data(),
                              mask.data(), x.data(), gamma.data(), mean.data(), invstd.data(), relu, train, M, C);
        ++i;
      }
      const std::string what = "bn C=" + std::to_string(C) + " variant " + std::to_string(variant);
      EXPECT_TRUE(y[0].vec() == y[1].vec(), "streamed " << what << " y");
      EXPECT_TRUE(dx[0].vec() == dx[1].vec(), "streamed " << what << " dx");
      if (residual) EXPECT_TRUE(dres[0].vec() == dres[1].vec(), "streamed " << what << " dresidual");
    }
  // Convolutions with statistics, staged (each output chunk in a buffer, then streamed into y by the
  // moments pass): y and the statistics bit for bit. Pointwise with 4 chunks per thread and a short
  // last one; strided 1x1 and 3x3 im2col chunks; K 40 (not whole vectors) and the direct few-channel
  // kernel are written in place (the same results either way).
  for (const ConvShape& s : {ConvShape{2, 121, 115, 16, 32, 1, 1, 1, 0}, ConvShape{3, 40, 37, 24, 48, 1, 1, 2, 0},
                             ConvShape{2, 61, 59, 8, 32, 3, 3, 2, 1}, ConvShape{2, 50, 47, 16, 40, 1, 1, 1, 0},
                             ConvShape{2, 40, 41, 4, 16, 3, 3, 1, 1}}) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
                 ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.K;
    const FVec x = rnd(nx, 21, 2.f, 4.f), w = rnd(nw, 22);
    Aligned y0(poison(ny)), y1(poison(ny));
    std::vector<double> st0(static_cast<size_t>(2) * s.K, kNaN), st1 = st0;
    const bool f0 = cached->conv2d_forward_stats(y0.get(), st0.data(), x.data(), w.data(), s);
    const bool f1 = streamed->conv2d_forward_stats(y1.get(), st1.data(), x.data(), w.data(), s);
    EXPECT_TRUE(f0 && f1, "conv stats " << str(s) << " fused " << f0 << " " << f1);
    EXPECT_TRUE(y0.vec() == y1.vec(), "staged conv stats y " << str(s));
    EXPECT_TRUE(st0 == st1, "staged conv stats moments " << str(s));
  }
}

TEST("kernels: batchnorm training with one row per channel is refused with E_SHAPE") {
  auto& b = mtest::runtime().cpu();
  float v[4] = {1, 1, 1, 1};
  EXPECT_THROWS_CODE(b.batchnorm_forward_train(v, nullptr, v, v, v, v, v, v, v, nullptr, false, 1, 1, 0.1f, 1e-5f, nullptr),
                     "E_SHAPE");
}

TEST("kernels: batchnorm backward with ReLU but no mask is refused with E_ARG") {
  auto& b = mtest::runtime().cpu();
  float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_THROWS_CODE(b.batchnorm_backward(v, nullptr, v, v, v, nullptr, v, v, v, v, true, true, 4, 2), "E_ARG");
}

TEST("kernels: batchnorm reference backward (train and eval, residual + ReLU) matches finite differences") {
  const int M = 7, C = 3;
  const size_t n = static_cast<size_t>(M) * C;
  const Vec x = to_d(rnd(n, 31, -2.f, 2.f)), res = to_d(rnd(n, 32)), dy = to_d(rnd(n, 33));
  const Vec gamma = to_d(rnd(C, 34, 0.5f, 1.5f)), beta = to_d(rnd(C, 35)), rm = to_d(rnd(C, 36)),
            rv = to_d(rnd(C, 37, 0.5f, 2.f));
  const double eps = 1e-5;
  for (bool train : {true, false})
    for (bool relu : {false, true}) {
      auto forward = [&](const Vec& xv, const Vec& gv, const Vec& bv, const Vec& rsv, Vec& out) {
        Vec mean(C), invstd(C), rmc = rm, rvc = rv;
        if (train)
          ref::batchnorm_forward_train(out.data(), mean.data(), invstd.data(), rmc.data(), rvc.data(), xv.data(),
                                       gv.data(), bv.data(), rsv.data(), relu, M, C, 0.1, eps);
        else
          ref::batchnorm_forward_eval(out.data(), xv.data(), gv.data(), bv.data(), rm.data(), rv.data(), rsv.data(),
                                      relu, M, C, eps);
      };
      Vec y(n), mean(C), invstd(C), rmc = rm, rvc = rv;
      if (train) {
        ref::batchnorm_forward_train(y.data(), mean.data(), invstd.data(), rmc.data(), rvc.data(), x.data(), gamma.data(),
                                     beta.data(), res.data(), relu, M, C, 0.1, eps);
      } else {
        forward(x, gamma, beta, res, y);
        for (int c = 0; c < C; ++c) {
          mean[c] = rm[c];
          invstd[c] = 1 / std::sqrt(rv[c] + eps);
        }
      }
      Vec dx(n), dres(n), dg(C), db(C);
      ref::batchnorm_backward(dx.data(), dres.data(), dg.data(), db.data(), dy.data(), y.data(), x.data(), gamma.data(),
                              mean.data(), invstd.data(), relu, train, M, C);
      const Vec ndx = numeric_grad(x, dy, [&](const Vec& v, Vec& o) { forward(v, gamma, beta, res, o); });
      const Vec ndg = numeric_grad(gamma, dy, [&](const Vec& v, Vec& o) { forward(x, v, beta, res, o); });
      const Vec ndb = numeric_grad(beta, dy, [&](const Vec& v, Vec& o) { forward(x, gamma, v, res, o); });
      const Vec ndr = numeric_grad(res, dy, [&](const Vec& v, Vec& o) { forward(x, gamma, beta, v, o); });
      const std::string what = std::string("bn FD train=") + (train ? "1" : "0") + " relu=" + (relu ? "1" : "0");
      EXPECT_REL(mtest::rel_error(dx.data(), ndx.data(), n), 1e-6, what << " dx");
      EXPECT_REL(mtest::rel_error(dg.data(), ndg.data(), C), 1e-6, what << " dgamma");
      EXPECT_REL(mtest::rel_error(db.data(), ndb.data(), C), 1e-6, what << " dbeta");
      EXPECT_REL(mtest::rel_error(dres.data(), ndr.data(), n), 1e-6, what << " dresidual");
    }
}

// ============================ elementwise ============================

TEST("kernels: relu, add, axpy, add_bias_rows, sum_rows match the reference") {
  auto backends = isa_backends();
  const size_t n = 70001;
  const FVec x = rnd(n, 41), yv = rnd(n, 42);
  const Vec xd = to_d(x), yd = to_d(yv);
  Vec r(n), dr(n), s(n), ax(n);
  ref::relu_forward(r.data(), xd.data(), n);
  ref::relu_backward(dr.data(), yd.data(), r.data(), n);
  for (size_t i = 0; i < n; ++i) {
    s[i] = xd[i] + yd[i];
    ax[i] = yd[i] + static_cast<double>(-0.3f) * xd[i];
  }
  const int M = 301, N = 67;
  const FVec rows = rnd(static_cast<size_t>(M) * N, 43), bias = rnd(N, 44), db0 = rnd(N, 45);
  Vec rows_ref(rows.size()), db_ref(N);
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < N; ++j) {
      rows_ref[static_cast<size_t>(m) * N + j] = rows[static_cast<size_t>(m) * N + j] + static_cast<double>(bias[j]);
      db_ref[j] += rows[static_cast<size_t>(m) * N + j];
    }
  for (int j = 0; j < N; ++j) db_ref[j] += db0[j];
  for (auto& b : backends) {
    FVec o = poison(n), d = poison(n), a = poison(n), y2 = yv;
    b->relu_forward(o.data(), x.data(), n);
    EXPECT_REL(err(o, r), 0.0, "relu forward" << tag(*b));
    b->relu_backward(d.data(), yv.data(), o.data(), n);
    EXPECT_REL(err(d, dr), 0.0, "relu backward" << tag(*b));
    b->add(a.data(), x.data(), yv.data(), n);
    EXPECT_REL(err(a, s), kTol, "add" << tag(*b));
    b->axpy(y2.data(), -0.3f, x.data(), n);
    EXPECT_REL(err(y2, ax), kTol, "axpy" << tag(*b));
    FVec rw = rows, db = db0;
    b->add_bias_rows(rw.data(), bias.data(), M, N);
    EXPECT_REL(err(rw, rows_ref), kTol, "add_bias_rows" << tag(*b));
    b->sum_rows(db.data(), rows.data(), M, N);
    EXPECT_REL(err(db, db_ref), kTol, "sum_rows (accumulates)" << tag(*b));
  }
}

TEST("kernels: relu reference backward matches finite differences") {
  const size_t n = 31;
  const Vec x = to_d(rnd(n, 51)), dy = to_d(rnd(n, 52));
  Vec y(n), dx(n);
  ref::relu_forward(y.data(), x.data(), n);
  ref::relu_backward(dx.data(), dy.data(), y.data(), n);
  const Vec nd = numeric_grad(x, dy, [&](const Vec& v, Vec& o) { ref::relu_forward(o.data(), v.data(), n); });
  EXPECT_REL(mtest::rel_error(dx.data(), nd.data(), n), 1e-7, "relu dx vs FD");
}

// ============================ pooling ============================

TEST("kernels: maxpool2d and global avgpool forward/backward match the reference") {
  auto backends = isa_backends();
  int seed = 900;
  for (const PoolShape& s : {PoolShape{2, 11, 9, 5, 3, 2, 1}, PoolShape{3, 8, 7, 3, 2, 2, 0},
                             PoolShape{1, 5, 7, 17, 3, 1, 1}, PoolShape{2, 13, 13, 1, 3, 2, 0}}) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
    const FVec x = rnd(nx, ++seed), dy = rnd(ny, ++seed);
    const Vec xd = to_d(x), dyd = to_d(dy);
    Vec y_ref(ny), dx_ref(nx);
    std::vector<int32_t> arg_ref(ny);
    ref::maxpool2d_forward(y_ref.data(), arg_ref.data(), xd.data(), s);
    ref::maxpool2d_backward(dx_ref.data(), dyd.data(), arg_ref.data(), s);
    for (auto& b : backends) {
      FVec y = poison(ny), dx = poison(nx);
      std::vector<int32_t> arg(ny, -7);
      b->maxpool2d_forward(y.data(), arg.data(), x.data(), s);
      EXPECT_REL(err(y, y_ref), 0.0, "maxpool forward k" << s.kernel << " s" << s.stride << " p" << s.pad << tag(*b));
      EXPECT_TRUE(arg == arg_ref, "maxpool argmax" << tag(*b));
      b->maxpool2d_backward(dx.data(), dy.data(), arg.data(), s);
      EXPECT_REL(err(dx, dx_ref), kTol, "maxpool backward" << tag(*b));
    }
  }
  for (int HW : {1, 49}) {
    const int N = 3, C = 37;
    const FVec x = rnd(static_cast<size_t>(N) * HW * C, 77), dy = rnd(static_cast<size_t>(N) * C, 78);
    const Vec xd = to_d(x), dyd = to_d(dy);
    Vec y_ref(dy.size()), dx_ref(x.size());
    ref::global_avgpool_forward(y_ref.data(), xd.data(), N, HW, C);
    ref::global_avgpool_backward(dx_ref.data(), dyd.data(), N, HW, C);
    for (auto& b : backends) {
      FVec y = poison(dy.size()), dx = poison(x.size());
      b->global_avgpool_forward(y.data(), x.data(), N, HW, C);
      b->global_avgpool_backward(dx.data(), dy.data(), N, HW, C);
      EXPECT_REL(err(y, y_ref), kTol, "avgpool forward HW=" << HW << tag(*b));
      EXPECT_REL(err(dx, dx_ref), kTol, "avgpool backward HW=" << HW << tag(*b));
    }
  }
}

// Ties (values from a set of four) and NaNs: the first maximum in window order wins, a NaN wins (the
// last one in window order, as PyTorch's kernels); channel counts with whole vectors of every ISA and
// a tail.
TEST("kernels: maxpool2d ties and NaN follow PyTorch's order") {
  auto backends = isa_backends();
  for (const PoolShape& s : {PoolShape{2, 12, 11, 40, 3, 2, 1}, PoolShape{1, 9, 9, 64, 3, 2, 1}, PoolShape{2, 7, 8, 19, 2, 1, 1}}) {
    const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
    FVec x = rnd(nx, 991);
    for (size_t i = 0; i < nx; ++i) x[i] = std::floor(x[i] * 1.5f);  // -2, -1, 0, 1: many ties
    for (size_t i = 5; i < nx; i += 97) x[i] = kNaN;  // windows with one NaN
    for (int w = 1; w <= 2; ++w) x[(static_cast<size_t>(s.W) + w) * s.C + 3] = kNaN;  // and windows with two
    Vec y_ref(ny);
    std::vector<int32_t> arg_ref(ny);
    ref::maxpool2d_forward(y_ref.data(), arg_ref.data(), to_d(x).data(), s);
    for (auto& b : backends) {
      FVec y = poison(ny);
      std::vector<int32_t> arg(ny, -7);
      b->maxpool2d_forward(y.data(), arg.data(), x.data(), s);
      EXPECT_TRUE(arg == arg_ref, "maxpool argmax with ties and NaN, C" << s.C << tag(*b));
      bool same = true;
      for (size_t i = 0; i < ny; ++i)
        same = same && (std::isnan(y_ref[i]) ? std::isnan(y[i]) : static_cast<double>(y[i]) == y_ref[i]);
      EXPECT_TRUE(same, "maxpool values with ties and NaN, C" << s.C << tag(*b));
    }
  }
}

TEST("kernels: pooling reference backward passes match finite differences") {
  const PoolShape s{2, 5, 6, 3, 3, 2, 1};
  const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.C;
  const Vec x = to_d(rnd(nx, 61)), dy = to_d(rnd(ny, 62));
  Vec y(ny), dx(nx);
  std::vector<int32_t> arg(ny);
  ref::maxpool2d_forward(y.data(), arg.data(), x.data(), s);
  ref::maxpool2d_backward(dx.data(), dy.data(), arg.data(), s);
  std::vector<int32_t> scratch(ny);
  const Vec nd = numeric_grad(x, dy, [&](const Vec& v, Vec& o) { ref::maxpool2d_forward(o.data(), scratch.data(), v.data(), s); });
  EXPECT_REL(mtest::rel_error(dx.data(), nd.data(), nx), 1e-7, "maxpool dx vs FD");
  const int N = 2, HW = 5, C = 3;
  const Vec xa = to_d(rnd(N * HW * C, 63)), dya = to_d(rnd(N * C, 64));
  Vec dxa(xa.size());
  ref::global_avgpool_backward(dxa.data(), dya.data(), N, HW, C);
  const Vec nda = numeric_grad(xa, dya, [&](const Vec& v, Vec& o) { ref::global_avgpool_forward(o.data(), v.data(), N, HW, C); });
  EXPECT_REL(mtest::rel_error(dxa.data(), nda.data(), xa.size()), 1e-7, "avgpool dx vs FD");
}

// ============================ optimisers and reductions ============================

TEST("kernels: sgd, lars, ema, all_finite and sum_squares match the reference formulas") {
  auto backends = isa_backends();
  const size_t n = 100003;
  const FVec p0 = rnd(n, 81), m0 = rnd(n, 82), g = rnd(n, 83, -0.01f, 0.01f), online = rnd(n, 84);
  for (auto& b : backends) {
    {
      FVec p = p0, m = m0;
      Vec pr = to_d(p0), mr = to_d(m0), gd = to_d(g);
      b->sgd_step(p.data(), m.data(), g.data(), n, 0.1f, 0.9f, 1e-4f);
      ref::sgd_step(pr.data(), mr.data(), gd.data(), n, 0.1f, 0.9f, 1e-4f);
      EXPECT_REL(err(p, pr), kTol, "sgd param" << tag(*b));
      EXPECT_REL(err(m, mr), kTol, "sgd momentum" << tag(*b));
    }
    for (bool adapt : {true, false}) {
      FVec p = p0, m = m0;
      Vec pr = to_d(p0), mr = to_d(m0), gd = to_d(g);
      b->lars_step(p.data(), m.data(), g.data(), n, 4.8f, 0.9f, 1e-6f, 0.001f, adapt);
      ref::lars_step(pr.data(), mr.data(), gd.data(), n, 4.8f, 0.9f, 1e-6f, 0.001f, adapt);
      EXPECT_REL(err(p, pr), kTol, "lars param adapt=" << adapt << tag(*b));
      EXPECT_REL(err(m, mr), kTol, "lars momentum adapt=" << adapt << tag(*b));
    }
    {  // a model's tensors in one call: several blocks (2^14 values each), tiny ones, some not adapting;
       // the same as lars_step per tensor, and bit for bit the same on 1 and 3 threads
      const std::vector<mveb::Backend::LarsTensor> ts = {
          {0, 7, false}, {7, 40000, true}, {40007, 16384, true}, {56391, 3, true}, {56394, 43600, false}, {99994, 9, true}};
      FVec p = p0, m = m0, pb = p0, mb = m0;
      Vec pr = to_d(p0), mr = to_d(m0), gd = to_d(g);
      b->lars_step_tensors(p.data(), m.data(), g.data(), ts, 4.8f, 0.9f, 1e-3f, 0.001f);
      b->Backend::lars_step_tensors(pb.data(), mb.data(), g.data(), ts, 4.8f, 0.9f, 1e-3f, 0.001f);
      for (const auto& t : ts)
        ref::lars_step(pr.data() + t.offset, mr.data() + t.offset, gd.data() + t.offset, t.numel, 4.8f, 0.9f,
                       t.adapt ? 1e-3f : 0.f, 0.001f, t.adapt);
      EXPECT_REL(err(p, pr), kTol, "lars_step_tensors param" << tag(*b));
      EXPECT_REL(err(m, mr), kTol, "lars_step_tensors momentum" << tag(*b));
      EXPECT_REL(err(pb, pr), kTol, "lars per tensor (the base class's lars_step_tensors)" << tag(*b));
      CpuBackend one(1), three(3);
      FVec p1 = p0, m1 = m0, p3 = p0, m3 = m0;
      one.lars_step_tensors(p1.data(), m1.data(), g.data(), ts, 4.8f, 0.9f, 1e-3f, 0.001f);
      three.lars_step_tensors(p3.data(), m3.data(), g.data(), ts, 4.8f, 0.9f, 1e-3f, 0.001f);
      EXPECT_TRUE(p1 == p3 && m1 == m3, "lars_step_tensors differs between 1 and 3 threads" << tag(*b));
    }
    {  // zero parameter norm: no adaptation
      FVec p(5, 0.f), m(5, 0.f), gz = rnd(5, 85);
      Vec pr(5, 0.0), mr(5, 0.0), gd = to_d(gz);
      b->lars_step(p.data(), m.data(), gz.data(), 5, 0.5f, 0.9f, 0.f, 0.001f, true);
      ref::lars_step(pr.data(), mr.data(), gd.data(), 5, 0.5f, 0.9f, 0.f, 0.001f, true);
      EXPECT_REL(err(p, pr), kTol, "lars zero norm" << tag(*b));
    }
    {
      FVec t = p0;
      Vec tr = to_d(p0), od = to_d(online);
      b->ema_update(t.data(), online.data(), n, 0.996f);
      ref::ema_update(tr.data(), od.data(), n, 0.996f);
      EXPECT_REL(err(t, tr), kTol, "ema" << tag(*b));
    }
    {
      double ss = 0;
      for (float v : p0) ss += static_cast<double>(v) * v;
      const double got = b->sum_squares(p0.data(), n);
      EXPECT_TRUE(std::fabs(got - ss) <= 1e-6 * ss, "sum_squares " << got << " vs " << ss << tag(*b));
      EXPECT_TRUE(b->all_finite(p0.data(), n), "all_finite on finite data" << tag(*b));
      for (size_t pos : {size_t(0), n / 2, n - 1})
        for (float bad : {kNaN, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
          FVec q = p0;
          q[pos] = bad;
          EXPECT_TRUE(!b->all_finite(q.data(), n), "all_finite misses " << bad << " at " << pos << tag(*b));
        }
      {
        FVec q = p0;  // the extremes of the finite range are finite
        q[0] = std::numeric_limits<float>::max();
        q[n / 2] = -std::numeric_limits<float>::max();
        q[n - 1] = std::numeric_limits<float>::denorm_min();
        q[1] = -0.f;
        EXPECT_TRUE(b->all_finite(q.data(), n), "all_finite on +-FLT_MAX, denormal, -0" << tag(*b));
      }
      EXPECT_TRUE(b->all_finite(nullptr, 0), "all_finite of nothing" << tag(*b));
    }
  }
}

TEST("kernels: every ISA the CPU supports is exercised") {
  auto backends = isa_backends();
  mveb::CpuFeatures f = mveb::detect_cpu_features();
  const size_t expected = 1 + (f.avx2 && f.fma ? 1 : 0) +
                          (f.avx2 && f.fma && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq ? 1 : 0);
  if (std::getenv("MVEB_ISA") == nullptr) EXPECT_TRUE(backends.size() == expected, backends.size() << " vs " << expected);
}
