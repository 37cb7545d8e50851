// conv.cpp: 2-D convolution on NHWC (groups 1, no bias; weights KRSC, output [N,P,Q,K]) through the
// CPU SGEMM. A 1x1 stride-1 unpadded convolution is a plain GEMM on the NHWC rows (no copy). Other
// shapes work on chunks of output rows (row = (n * P + p) * Q + q) small enough to stay in the L2
// cache (kChunkFloats per thread): each pool thread gathers its chunk's patches (im2col) into its own
// workspace and runs a single-threaded GEMM on it, so the patch matrix is never written to memory
// in full:
//   forward          y[rows, K]      = col[rows, RSC] * w[K, RSC]^T
//   backward weight  dw[K, RSC]     += dy[rows, K]^T * col[rows, RSC]  (per-thread partial dw, summed;
//                                      ACCUMULATES into dw as backend.h says)
//   backward data    dcol[rows, RSC] = dy[rows, K] * w[K, RSC], scattered (col2im) into the thread's
//                    own images of dx (one image per task, so no two threads write the same pixel)
// With too few rows (or fewer images than threads) the GEMM itself is threaded instead, over one
// bounded workspace (kWorkspaceFloats, 16 MB).
// Tested by test/native/test_kernels.cpp ("kernels: conv ...") against the float64 reference, whose
// backward passes are checked by finite differences.
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/gemm.h"
#include "cpu/kernel_util.h"

namespace mveb {

namespace {
constexpr int64_t kWorkspaceFloats = int64_t(4) << 20;
constexpr int64_t kChunkFloats = int64_t(192) << 10;  // 768 KB of patches per thread

void check_conv(const char* op, const ConvShape& s) {
  check_nonnegative(op, "N", s.N);
  check_positive(op, "H", s.H);
  check_positive(op, "W", s.W);
  check_positive(op, "C", s.C);
  check_positive(op, "K", s.K);
  check_positive(op, "R", s.R);
  check_positive(op, "S", s.S);
  check_positive(op, "stride", s.stride);
  check_nonnegative(op, "pad", s.pad);
  MVEB_CHECK(s.P() > 0 && s.Q() > 0, "E_SHAPE", op, ": output size must be > 0, found ", s.P(), "x", s.Q(),
             " for input ", s.H, "x", s.W, " filter ", s.R, "x", s.S, " stride ", s.stride, " pad ", s.pad);
}

bool is_pointwise(const ConvShape& s) { return s.R == 1 && s.S == 1 && s.stride == 1 && s.pad == 0; }

// col[r - row0, (r_, s_, c)] for output rows [row0, row1) (row = (n * P + p) * Q + q).
void im2col(ThreadPool& pool, float* col, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  const int P = s.P(), Q = s.Q(), C = s.C;
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * C;
  pool.parallel_for(row1 - row0, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t row = row0 + i;
      const int q = static_cast<int>(row % Q), p = static_cast<int>((row / Q) % P);
      const int64_t n = row / (static_cast<int64_t>(P) * Q);
      float* dst = col + i * rsc;
      // For each filter row the S taps read S * C contiguous floats of x (the part inside the
      // image); the taps that fall into the padding are zeros.
      const int w0 = q * s.stride - s.pad;
      const int s_lo = std::max(0, -w0), s_hi = std::min(s.S, s.W - w0);
      const size_t row_floats = static_cast<size_t>(s.S) * C;
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        float* d = dst + static_cast<int64_t>(r) * s.S * C;
        if (h < 0 || h >= s.H || s_lo >= s_hi) {
          std::memset(d, 0, sizeof(float) * row_floats);
          continue;
        }
        if (s_lo > 0) std::memset(d, 0, sizeof(float) * static_cast<size_t>(s_lo) * C);
        std::memcpy(d + static_cast<int64_t>(s_lo) * C, x + ((n * s.H + h) * s.W + w0 + s_lo) * C,
                    sizeof(float) * static_cast<size_t>(s_hi - s_lo) * C);
        if (s_hi < s.S)
          std::memset(d + static_cast<int64_t>(s_hi) * C, 0, sizeof(float) * static_cast<size_t>(s.S - s_hi) * C);
      }
    }
  });
}

// dx for images [n0, n1) from dcol holding the rows of those images: each input pixel gathers the
// patch entries that read it.
void col2im(ThreadPool& pool, float* dx, const float* dcol, const ConvShape& s, int n0, int n1) {
  const int P = s.P(), Q = s.Q(), C = s.C;
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * C;
  pool.parallel_for(static_cast<int64_t>(n1 - n0) * s.H, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t nh = b; nh < e; ++nh) {
      const int64_t nl = nh / s.H;  // image within the chunk
      const int h = static_cast<int>(nh % s.H);
      for (int w = 0; w < s.W; ++w) {
        float* d = dx + (((n0 + nl) * s.H + h) * s.W + w) * C;
        std::memset(d, 0, sizeof(float) * static_cast<size_t>(C));
        for (int r = 0; r < s.R; ++r) {
          const int hp = h + s.pad - r;
          if (hp < 0 || hp % s.stride) continue;
          const int p = hp / s.stride;
          if (p >= P) continue;
          for (int ss = 0; ss < s.S; ++ss) {
            const int wq = w + s.pad - ss;
            if (wq < 0 || wq % s.stride) continue;
            const int q = wq / s.stride;
            if (q >= Q) continue;
            const float* src = dcol + ((nl * P + p) * Q + q) * rsc + (static_cast<int64_t>(r) * s.S + ss) * C;
            for (int c = 0; c < C; ++c) d[c] += src[c];
          }
        }
      }
    }
  });
}
}  // namespace

namespace {
// Dynamic tasks over `rows` split into chunks of at most max_rows, the count a multiple of the
// thread count so the threads end together. Returns the chunk size (0: too little work to split).
int64_t balanced_chunk(int64_t rows, int64_t max_rows, int threads) {
  if (rows < 64 * static_cast<int64_t>(threads)) return 0;
  int64_t chunks = (rows + max_rows - 1) / max_rows;
  chunks = (chunks + threads - 1) / threads * threads;
  return (rows + chunks - 1) / chunks;
}

// dx_img (one image, zeroed by the caller) += the patch gradients dcol of output rows [p0, p1).
void col2im_scatter(float* dx_img, const float* dcol, const ConvShape& s, int p0, int p1) {
  const int Q = s.Q(), C = s.C;
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * C;
  for (int p = p0; p < p1; ++p)
    for (int q = 0; q < Q; ++q) {
      const float* src = dcol + (static_cast<int64_t>(p - p0) * Q + q) * rsc;
      // The taps of one filter row inside the image are one contiguous span in both dcol and dx.
      const int w0 = q * s.stride - s.pad;
      const int s_lo = std::max(0, -w0), s_hi = std::min(s.S, s.W - w0);
      if (s_lo >= s_hi) continue;
      const int64_t span = static_cast<int64_t>(s_hi - s_lo) * C;
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        if (h < 0 || h >= s.H) continue;
        float* d = dx_img + (static_cast<int64_t>(h) * s.W + w0 + s_lo) * C;
        const float* g = src + (static_cast<int64_t>(r) * s.S + s_lo) * C;
        for (int64_t i = 0; i < span; ++i) d[i] += g[i];
      }
    }
}
}  // namespace

void CpuBackend::conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) {
  check_conv("conv2d_forward", s);
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const int rsc = s.R * s.S * s.C;
  if (rows == 0) return;
  if (is_pointwise(s)) {
    gemm(false, true, static_cast<int>(rows), s.K, s.C, 1.f, x, s.C, w, s.C, 0.f, y, s.K);
    return;
  }
  const gemm_detail::KernelInfo kern = gemm_detail::kernel_for(isa());
  const int T = pool().size();
  const int64_t chunk = balanced_chunk(rows, std::max<int64_t>(16, kChunkFloats / rsc), T);
  if (chunk > 0) {
    const gemm_detail::PackedB wt(pool(), kern, true, s.K, rsc, w, rsc);
    std::vector<std::unique_ptr<ScratchBuffer>> workspace(static_cast<size_t>(T));
    pool().parallel_tasks((rows + chunk - 1) / chunk, [&](int64_t task, int t) {
      auto& col = workspace[static_cast<size_t>(t)];
      if (!col) col.reset(new ScratchBuffer(static_cast<size_t>(chunk * rsc)));
      const int64_t r0 = task * chunk, r1 = std::min(rows, r0 + chunk);
      im2col(pool(), col->get(), x, s, r0, r1);
      gemm_detail::gemm_run(pool(), kern, false, true, static_cast<int>(r1 - r0), s.K, rsc, 1.f, col->get(), rsc,
                            nullptr, 0, 0.f, y + r0 * s.K, s.K, &wt);
    });
    return;
  }
  const int64_t big = std::max<int64_t>(1, std::min<int64_t>(rows, kWorkspaceFloats / rsc));
  ScratchBuffer col(static_cast<size_t>(big * rsc));
  for (int64_t r0 = 0; r0 < rows; r0 += big) {
    const int64_t r1 = std::min(rows, r0 + big);
    im2col(pool(), col.get(), x, s, r0, r1);
    gemm(false, true, static_cast<int>(r1 - r0), s.K, rsc, 1.f, col.get(), rsc, w, rsc, 0.f, y + r0 * s.K, s.K);
  }
}

void CpuBackend::conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) {
  check_conv("conv2d_backward_data", s);
  if (s.N == 0) return;
  const int rsc = s.R * s.S * s.C;
  const int P = s.P(), Q = s.Q();
  const int64_t pq = static_cast<int64_t>(P) * Q;
  if (is_pointwise(s)) {
    gemm(false, false, static_cast<int>(s.N * pq), s.C, s.K, 1.f, dy, s.K, w, s.C, 0.f, dx, s.C);
    return;
  }
  const int T = pool().size();
  const int64_t image = static_cast<int64_t>(s.H) * s.W * s.C;
  if (s.N >= T) {
    // One image per task; bands of output rows small enough for the cache.
    const gemm_detail::KernelInfo kern = gemm_detail::kernel_for(isa());
    const gemm_detail::PackedB wt(pool(), kern, false, rsc, s.K, w, rsc);
    const int band = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(P, kChunkFloats / (Q * static_cast<int64_t>(rsc)))));
    std::vector<std::unique_ptr<ScratchBuffer>> workspace(static_cast<size_t>(T));
    pool().parallel_tasks(s.N, [&](int64_t n, int t) {
      auto& dcol = workspace[static_cast<size_t>(t)];
      if (!dcol) dcol.reset(new ScratchBuffer(static_cast<size_t>(band) * Q * rsc));
      float* dx_img = dx + n * image;
      std::memset(dx_img, 0, sizeof(float) * static_cast<size_t>(image));
      for (int p0 = 0; p0 < P; p0 += band) {
        const int p1 = std::min(P, p0 + band);
        gemm_detail::gemm_run(pool(), kern, false, false, (p1 - p0) * Q, rsc, s.K, 1.f,
                              dy + (n * pq + static_cast<int64_t>(p0) * Q) * s.K, s.K, nullptr, 0, 0.f, dcol->get(),
                              rsc, &wt);
        col2im_scatter(dx_img, dcol->get(), s, p0, p1);
      }
    });
    return;
  }
  const int images = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(s.N, kWorkspaceFloats / (pq * rsc))));
  ScratchBuffer dcol(static_cast<size_t>(images * pq * rsc));
  for (int n0 = 0; n0 < s.N; n0 += images) {
    const int n1 = std::min(s.N, n0 + images);
    gemm(false, false, static_cast<int>((n1 - n0) * pq), rsc, s.K, 1.f, dy + n0 * pq * s.K, s.K, w, rsc, 0.f,
         dcol.get(), rsc);
    col2im(pool(), dx, dcol.get(), s, n0, n1);
  }
}

void CpuBackend::conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s) {
  check_conv("conv2d_backward_weight", s);
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const int rsc = s.R * s.S * s.C;
  if (rows == 0) return;
  if (is_pointwise(s)) {
    gemm(true, false, s.K, s.C, static_cast<int>(rows), 1.f, dy, s.K, x, s.C, 1.f, dw, s.C);
    return;
  }
  const int T = pool().size();
  const int64_t nw = static_cast<int64_t>(s.K) * rsc;
  const int64_t chunk = balanced_chunk(rows, std::max<int64_t>(16, kChunkFloats / rsc), T);
  if (chunk > 0) {
    // Each thread accumulates its chunks into its own dw, then the partials are added to dw.
    const gemm_detail::KernelInfo kern = gemm_detail::kernel_for(isa());
    std::vector<std::unique_ptr<ScratchBuffer>> workspace(static_cast<size_t>(T)), partial(static_cast<size_t>(T));
    pool().parallel_tasks((rows + chunk - 1) / chunk, [&](int64_t task, int t) {
      auto& col = workspace[static_cast<size_t>(t)];
      auto& acc = partial[static_cast<size_t>(t)];
      const bool first = !acc;
      if (first) {
        col.reset(new ScratchBuffer(static_cast<size_t>(chunk * rsc)));
        acc.reset(new ScratchBuffer(static_cast<size_t>(nw)));
      }
      const int64_t r0 = task * chunk, r1 = std::min(rows, r0 + chunk);
      im2col(pool(), col->get(), x, s, r0, r1);
      gemm_detail::gemm_run(pool(), kern, true, false, s.K, rsc, static_cast<int>(r1 - r0), 1.f, dy + r0 * s.K, s.K,
                            col->get(), rsc, first ? 0.f : 1.f, acc->get(), rsc);
    });
    pool().parallel_for(nw, 1 << 14, [&](int64_t b, int64_t e, int) {
      for (const auto& acc : partial) {
        if (!acc) continue;
        const float* a = acc->get();
        for (int64_t i = b; i < e; ++i) dw[i] += a[i];
      }
    });
    return;
  }
  const int64_t big = std::max<int64_t>(1, std::min<int64_t>(rows, kWorkspaceFloats / rsc));
  ScratchBuffer col(static_cast<size_t>(big * rsc));
  for (int64_t r0 = 0; r0 < rows; r0 += big) {
    const int64_t r1 = std::min(rows, r0 + big);
    im2col(pool(), col.get(), x, s, r0, r1);
    gemm(true, false, s.K, rsc, static_cast<int>(r1 - r0), 1.f, dy + r0 * s.K, s.K, col.get(), rsc, 1.f, dw, rsc);
  }
}

}  // namespace mveb
