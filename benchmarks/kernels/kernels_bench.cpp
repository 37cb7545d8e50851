// kernels_bench.cpp: timing of the CPU backend's SGEMM and convolutions (benchmarks/kernels/run.py
// builds it against libmveb_core.a, runs it next to PyTorch and prints the ratios).
// One measurement per invocation (run.py alternates it with PyTorch, shape by shape):
//   kernels_bench THREADS peak                       -> "peak1 <GFLOP/s of one core>"
//   kernels_bench THREADS gemm M N K tA tB           -> "gemm M N K tA tB <GFLOP/s> <max rel err>"
//   kernels_bench THREADS conv N H W C K R S st pad  -> "conv ... <fwd ms> <bwd data ms> <bwd weight ms>"
//   kernels_bench THREADS bn M C                     -> "bn M C <fwd ms> <bwd ms>" (train, residual + ReLU)
//   kernels_bench THREADS pool N H W C               -> "pool N H W C <fwd ms> <bwd ms>" (max pool 3x3 /2 pad 1)
//   kernels_bench 1 ukernel KC                       -> "ukernel KC <GFLOP/s> <% of peak1>": the ISA's packed
//     micro-kernel alone on panels that stay in L1/L2 (9 A panels against each of 8 B panels, as
//     gemm_run orders them): the ceiling of every product on this core, before packing and memory
// MVEB_MATMUL_PRECISION=high runs the AMX bf16x3 path where the CPU has it (run.py adds those columns).
// The GEMM result is checked against float64 dot products on sampled entries. THREADS = 1 times with
// the thread's CPU time (robust on a shared machine), otherwise wall time.
#include <immintrin.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

#include "cpu/cpu_backend.h"

using Clock = std::chrono::steady_clock;

namespace {

std::vector<float> random_floats(size_t n, unsigned seed) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>((s >> 8) & 0xFFFF) / 32768.f - 1.f;
  }
  return v;
}

// With one thread the kernels run on the calling thread, so its CPU time (CLOCK_THREAD_CPUTIME_ID)
// measures them without the time other jobs on the shared machine take; with more, wall time.
bool g_thread_cpu_time = false;
double now_seconds() {
  if (!g_thread_cpu_time) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// Measured FP32 FMA ceiling of one core: independent 512-bit FMA chains (timed like the kernels:
// thread CPU time with THREADS = 1).
__attribute__((target("avx512f"))) double fma_peak_one_core() {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.0001f);
  const long iters = 2000000;
  double dt = 1e30;
  for (int rep = 0; rep < 10; ++rep) {  // best of 10: the machine is shared
    const double t0 = now_seconds();
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    dt = std::min(dt, now_seconds() - t0);
  }
  float sink = 0;
  for (int i = 0; i < 16; ++i) sink += _mm512_reduce_add_ps(acc[i]);
  if (sink == 12345.f) std::printf("#\n");
  return iters * 16.0 * 16 * 2 / dt / 1e9;
}

template <typename F>
double best_time(F f, double budget_s = 0.6, int max_reps = 20) {
  f();  // warm-up
  double best = 1e30, total = 0;
  for (int r = 0; r < max_reps && total < budget_s; ++r) {
    const double t0 = now_seconds();
    f();
    const double dt = now_seconds() - t0;
    best = std::min(best, dt);
    total += dt;
  }
  return best;
}

void bench_gemm(mveb::CpuBackend& b, int M, int N, int K, bool ta, bool tb) {
  auto A = random_floats(static_cast<size_t>(M) * K, 1), B = random_floats(static_cast<size_t>(K) * N, 2);
  std::vector<float> C(static_cast<size_t>(M) * N);
  const int lda = ta ? M : K, ldb = tb ? K : N;
  const double t = best_time([&] { b.gemm(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), N); });
  double max_err = 0;
  for (int s = 0; s < 16; ++s) {
    const int i = (s * 7919) % M, j = (s * 104729) % N;
    double ref = 0, mag = 0;
    for (int k = 0; k < K; ++k) {
      const double a = ta ? A[static_cast<size_t>(k) * lda + i] : A[static_cast<size_t>(i) * lda + k];
      const double bb = tb ? B[static_cast<size_t>(j) * ldb + k] : B[static_cast<size_t>(k) * ldb + j];
      ref += a * bb;
      mag += std::fabs(a * bb);
    }
    max_err = std::max(max_err, std::fabs(C[static_cast<size_t>(i) * N + j] - ref) / (mag + 1e-30));
  }
  std::printf("gemm %d %d %d %d %d %.2f %.2e\n", M, N, K, ta, tb, 2.0 * M * N * K / t / 1e9, max_err);
  std::fflush(stdout);
}

void bench_conv(mveb::CpuBackend& b, const mveb::ConvShape& s) {
  const size_t nx = static_cast<size_t>(s.N) * s.H * s.W * s.C, nw = static_cast<size_t>(s.K) * s.R * s.S * s.C,
               ny = static_cast<size_t>(s.N) * s.P() * s.Q() * s.K;
  auto x = random_floats(nx, 3), w = random_floats(nw, 4), dy = random_floats(ny, 5);
  std::vector<float> y(ny), dx(nx), dw(nw);
  const double tf = best_time([&] { b.conv2d_forward(y.data(), x.data(), w.data(), s); }, 0.5, 5);
  const double td = best_time([&] { b.conv2d_backward_data(dx.data(), dy.data(), w.data(), s); }, 0.5, 5);
  const double tw = best_time([&] { b.conv2d_backward_weight(dw.data(), dy.data(), x.data(), s); }, 0.5, 5);
  std::printf("conv %d %d %d %d %d %d %d %d %d %.3f %.3f %.3f\n", s.N, s.H, s.W, s.C, s.K, s.R, s.S, s.stride, s.pad,
              tf * 1e3, td * 1e3, tw * 1e3);
  std::fflush(stdout);
}
// Batch norm (train, fused residual + ReLU) forward and backward over [M, C].
void bench_bn(mveb::CpuBackend& b, int M, int C) {
  const size_t n = static_cast<size_t>(M) * C;
  auto x = random_floats(n, 6), res = random_floats(n, 7), dy = random_floats(n, 8);
  std::vector<float> y(n), dx(n), dres(n), gamma(C, 1.f), beta(C, 0.1f), mean(C), invstd(C), rm(C, 0.f), rv(C, 1.f),
      dg(C), db(C);
  std::vector<uint8_t> mask(mveb::relu_mask_bytes(M, C));
  const double tf = best_time([&] {
    b.batchnorm_forward_train(y.data(), mask.data(), mean.data(), invstd.data(), rm.data(), rv.data(), x.data(),
                              gamma.data(), beta.data(), res.data(), true, M, C, 0.1f, 1e-5f, nullptr);
  }, 0.5, 10);
  const double tb = best_time([&] {
    b.batchnorm_backward(dx.data(), dres.data(), dg.data(), db.data(), dy.data(), mask.data(), x.data(),
                         gamma.data(), mean.data(), invstd.data(), true, true, M, C);
  }, 0.5, 10);
  std::printf("bn %d %d %.3f %.3f\n", M, C, tf * 1e3, tb * 1e3);
  std::fflush(stdout);
}

void bench_pool(mveb::CpuBackend& b, int N, int H, int W, int C) {
  const mveb::PoolShape s{N, H, W, C, 3, 2, 1};
  const size_t in = static_cast<size_t>(N) * H * W * C, out = static_cast<size_t>(N) * s.P() * s.Q() * C;
  auto x = random_floats(in, 9), dy = random_floats(out, 10);
  std::vector<float> y(out), dx(in);
  std::vector<int32_t> arg(out);
  const double tf = best_time([&] { b.maxpool2d_forward(y.data(), arg.data(), x.data(), s); }, 0.5, 10);
  const double tb = best_time([&] { b.maxpool2d_backward(dx.data(), dy.data(), arg.data(), s); }, 0.5, 10);
  std::printf("pool %d %d %d %d %.3f %.3f\n", N, H, W, C, tf * 1e3, tb * 1e3);
  std::fflush(stdout);
}

// The micro-kernel of b's ISA alone: kc deep, 9 MR-tall A panels against each of 8 NR-wide B panels
// (B panel in L1, A panels from L2), C tiles in L1.
void bench_ukernel(mveb::CpuBackend& b, int kc) {
  const mveb::gemm_detail::KernelInfo k = mveb::gemm_detail::kernel_for(b.isa());
  const int a_panels = 9, b_panels = 8;
  mveb::ScratchBuffer A(static_cast<size_t>(a_panels) * k.mr * kc), B(static_cast<size_t>(b_panels) * kc * k.nr),
      C(static_cast<size_t>(a_panels) * k.mr * k.nr);
  const auto a = random_floats(static_cast<size_t>(a_panels) * k.mr * kc, 9), bv = random_floats(static_cast<size_t>(b_panels) * kc * k.nr, 10);
  std::copy(a.begin(), a.end(), A.get());
  std::copy(bv.begin(), bv.end(), B.get());
  const int reps = std::max(1, (1 << 20) / kc);
  const double t = best_time([&] {
    for (int r = 0; r < reps; ++r)
      for (int jp = 0; jp < b_panels; ++jp)
        for (int ip = 0; ip < a_panels; ++ip)
          k.fn(kc, A.get() + static_cast<size_t>(ip) * k.mr * kc, B.get() + static_cast<size_t>(jp) * kc * k.nr,
               C.get() + static_cast<size_t>(ip) * k.mr * k.nr, k.nr, 0.f);
  });
  const double gflops = 2.0 * k.mr * k.nr * kc * a_panels * b_panels * reps / t / 1e9;
  const double peak = b.features().avx512f ? fma_peak_one_core() : 0;
  std::printf("ukernel %d %.1f %.0f\n", kc, gflops, peak > 0 ? 100 * gflops / peak : 0.0);
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  // kernels_bench THREADS peak | gemm M N K tA tB | conv N H W C K R S stride pad | bn M C | pool N H W C | ukernel KC
  if (argc < 3) {
    std::fprintf(stderr, "usage: kernels_bench THREADS peak | gemm M N K tA tB | conv N H W C K R S stride pad | bn M C | pool N H W C | ukernel KC\n");
    return 2;
  }
  const int threads = std::atoi(argv[1]);
  const std::string what = argv[2];
  std::vector<int> v;
  for (int i = 3; i < argc; ++i) v.push_back(std::atoi(argv[i]));
  mveb::CpuBackend b(threads);
  // MVEB_STREAM_BYTES: CpuBackend::stream_bytes (outputs at least this large are streamed past the caches)
  if (const char* sb = std::getenv("MVEB_STREAM_BYTES")) b.stream_bytes = std::strtoull(sb, nullptr, 10);
  g_thread_cpu_time = threads == 1;
  std::printf("isa %s threads %d amx %d precision %s\n", mveb::isa_name(b.isa()), threads, b.amx() ? 1 : 0,
              b.matmul_precision() == mveb::MatmulPrecision::High ? "high" : "highest");
  if (what == "peak" && b.features().avx512f) {  // one core's FMA ceiling (the caller scales by cores)
    std::printf("peak1 %.1f\n", fma_peak_one_core());
  } else if (what == "gemm" && v.size() == 5) {
    bench_gemm(b, v[0], v[1], v[2], v[3] != 0, v[4] != 0);
  } else if (what == "conv" && v.size() == 9) {
    bench_conv(b, mveb::ConvShape{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]});
  } else if (what == "bn" && v.size() == 2) {
    bench_bn(b, v[0], v[1]);
  } else if (what == "pool" && v.size() == 4) {
    bench_pool(b, v[0], v[1], v[2], v[3]);
  } else if (what == "ukernel" && v.size() == 1 && v[0] > 0) {
    bench_ukernel(b, v[0]);
  } else {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }
  return 0;
}
