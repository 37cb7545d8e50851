// bench_cuda.cpp: timings of the CUDA backend's main ops at ResNet-50 / MVEB sizes, printed as
// "ours <op> <ms> <GFLOP/s or GB/s>" lines; bench_torch.py runs the same ops in PyTorch (fp32, TF32
// off) and prints the side-by-side table with ratios. Built and run by check.sh on the GPU machine:
//   g++ -O2 -std=c++17 -I native benchmarks/device/bench_cuda.cpp -Wl,--start-group build-gpu/libmveb_core.a \
//       build-gpu/libmveb_cuda.a -Wl,--end-group -L<cuda>/lib64 -lcudart_static -lpthread -ldl -lrt
// Napkin floors on H200 (anchors: fp32 SIMT ~67 TFLOP/s, HBM ~4.8 TB/s): gemm 4096^3 = 137 GFLOP
// -> >= 2 ms; BN train fwd on 32x56x56x64 (25.7 MB in) reads x 3 times + writes y -> ~21 us.
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/error.h"

using mveb::Backend;

namespace {

double time_ms(Backend& b, const std::function<void()>& fn, int iters = 20) {
  for (int i = 0; i < 3; ++i) fn();
  b.synchronize();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) fn();
  b.synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
}

// Device buffers of one benchmark block, freed (with their sizes) at scope exit.
struct Arena {
  Backend& b;
  std::vector<std::pair<void*, size_t>> blocks;
  ~Arena() {
    for (auto& bl : blocks) b.deallocate(bl.first, bl.second);
  }
};
float* buffer(Arena& arena, size_t n, float value) {
  Backend& b = arena.b;
  float* p = static_cast<float*>(b.allocate(n * sizeof(float)));
  arena.blocks.push_back({p, n * sizeof(float)});
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = value * static_cast<float>((i * 2654435761u) % 1000) / 1000.f - value / 2;
  b.upload(p, h.data(), n * sizeof(float));
  return p;
}

void report(const char* op, double ms, double work, const char* unit) {
  std::printf("ours %-28s %10.4f ms %10.1f %s\n", op, ms, work / (ms * 1e-3) / 1e9, unit);
}

}  // namespace

int main() {
  std::string reason;
  Backend* bp = mveb::cuda_backend_create(&reason);
  if (!bp) {
    std::printf("no CUDA: %s\n", reason.c_str());
    return 1;
  }
  Backend& b = *bp;
  try {
    {  // gemm
      Arena a{b, {}};
      const int n = 4096;
      float *A = buffer(a, size_t(n) * n, 1), *B = buffer(a, size_t(n) * n, 1), *C = buffer(a, size_t(n) * n, 1);
      double ms = time_ms(b, [&] { b.gemm(false, false, n, n, n, 1.f, A, n, B, n, 0.f, C, n); }, 5);
      report("gemm_nn_4096", ms, 2.0 * n * n * n, "GFLOP/s");
      ms = time_ms(b, [&] { b.gemm(true, false, n, n, n, 1.f, A, n, B, n, 0.f, C, n); }, 5);
      report("gemm_tn_4096", ms, 2.0 * n * n * n, "GFLOP/s");
      // projector-sized: [256, 2048] x [2048, 2048]^T
      ms = time_ms(b, [&] { b.gemm(false, true, 256, 2048, 2048, 1.f, A, 2048, B, 2048, 0.f, C, 2048); });
      report("gemm_nt_256x2048x2048", ms, 2.0 * 256 * 2048 * 2048, "GFLOP/s");
    }
    {  // conv 3x3, ResNet-50 stage 1 at batch 32
      Arena a{b, {}};
      mveb::ConvShape s{32, 56, 56, 64, 64, 3, 3, 1, 1};
      size_t nx = size_t(s.N) * s.H * s.W * s.C, nw = size_t(s.K) * s.R * s.S * s.C, ny = size_t(s.N) * s.P() * s.Q() * s.K;
      float *x = buffer(a, nx, 1), *w = buffer(a, nw, 0.1f), *y = buffer(a, ny, 1), *dw = buffer(a, nw, 0);
      const double flop = 2.0 * double(s.N) * s.P() * s.Q() * s.K * s.R * s.S * s.C;
      report("conv3x3_fwd_32x56x56x64", time_ms(b, [&] { b.conv2d_forward(y, x, w, s); }), flop, "GFLOP/s");
      report("conv3x3_bwd_data", time_ms(b, [&] { b.conv2d_backward_data(x, y, w, s); }), flop, "GFLOP/s");
      report("conv3x3_bwd_weight", time_ms(b, [&] { b.conv2d_backward_weight(dw, y, x, s); }), flop, "GFLOP/s");
    }
    {  // batch norm + relu, [32*56*56, 64]
      Arena a{b, {}};
      const int M = 32 * 56 * 56, C = 64;
      size_t n = size_t(M) * C;
      float *x = buffer(a, n, 2), *y = buffer(a, n, 0), *g = buffer(a, C, 1), *be = buffer(a, C, 1);
      float *mean = buffer(a, C, 0), *inv = buffer(a, C, 1), *rm = buffer(a, C, 0), *rv = buffer(a, C, 1);
      float *dx = buffer(a, n, 0), *dg = buffer(a, C, 0), *db = buffer(a, C, 0);
      uint8_t* mask = reinterpret_cast<uint8_t*>(buffer(a, (mveb::relu_mask_bytes(M, C) + 3) / 4, 0));
      // bytes moved: forward reads x 3x, writes y, reads y back for the mask; backward reads dy, x
      // twice each and writes dx (the mask: 1/32 of a float per element, left out)
      report("bn_relu_train_fwd", time_ms(b, [&] {
               b.batchnorm_forward_train(y, mask, mean, inv, rm, rv, x, g, be, nullptr, true, M, C, 0.1f, 1e-5f, nullptr);
             }), 5.0 * n * 4, "GB/s");
      report("bn_relu_bwd", time_ms(b, [&] {
               b.batchnorm_backward(dx, nullptr, dg, db, y, mask, x, g, mean, inv, true, true, M, C);
             }), 5.0 * n * 4, "GB/s");
    }
    {  // optimiser on a ResNet-50-sized arena
      Arena a{b, {}};
      const size_t n = 25557032;
      float *p = buffer(a, n, 1), *m = buffer(a, n, 0), *g = buffer(a, n, 1);
      report("lars_step_25.6M", time_ms(b, [&] { b.lars_step(p, m, g, n, 0.3f, 0.9f, 1e-6f, 0.001f, true); }),
             6.0 * n * 4, "GB/s");
    }
    {  // vMF score at the official per-GPU batch
      Arena a{b, {}};
      const int N = 128, D = 2048;
      float *z = buffer(a, size_t(N) * D, 1), *zn = buffer(a, size_t(N) * D, 0), *norms = buffer(a, N, 0);
      float* score = buffer(a, size_t(N) * D, 0);
      b.l2_normalize_rows_forward(zn, norms, z, N, D, 1e-12f);
      report("vmf_score_128x2048", time_ms(b, [&] { b.vmf_score(score, zn, N, D, 0.01f, 0.1f); }),
             2.0 * N * N * D + 2.0 * N * N * D, "GFLOP/s");
    }
  } catch (const mveb::Error& e) {
    std::printf("error %s: %s\n", e.code().c_str(), e.what());
    delete bp;
    return 1;
  }
  delete bp;
  return 0;
}
