// conv.cpp: 2-D convolution on NHWC (groups 1, no bias; weights KRSC, output [N,P,Q,K]) through the
// CPU SGEMM. A 1x1 stride-1 unpadded convolution is a plain GEMM on the NHWC rows (no copy). Other
// shapes gather patches (im2col) for a chunk of output rows into a bounded workspace (at most
// kWorkspaceFloats floats, 16 MB) and run one GEMM per chunk:
//   forward          y[rows, K]    = col[rows, RSC] * w[K, RSC]^T
//   backward data    dcol[rows, RSC] = dy[rows, K] * w[K, RSC], then a race-free gather (col2im) per
//                    input row, chunks of whole images
//   backward weight  dw[K, RSC]   += dy[rows, K]^T * col[rows, RSC]   (ACCUMULATES, as backend.h says)
// Tested by test/native/test_kernels.cpp ("kernels: conv ...") against the float64 reference, whose
// backward passes are checked by finite differences.
#include <algorithm>
#include <cstring>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"

namespace mveb {

namespace {
constexpr int64_t kWorkspaceFloats = int64_t(4) << 20;

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
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        for (int ss = 0; ss < s.S; ++ss) {
          const int w = q * s.stride - s.pad + ss;
          float* d = dst + (static_cast<int64_t>(r) * s.S + ss) * C;
          if (h < 0 || h >= s.H || w < 0 || w >= s.W) {
            std::memset(d, 0, sizeof(float) * static_cast<size_t>(C));
          } else {
            std::memcpy(d, x + ((n * s.H + h) * s.W + w) * C, sizeof(float) * static_cast<size_t>(C));
          }
        }
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

void CpuBackend::conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) {
  check_conv("conv2d_forward", s);
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const int rsc = s.R * s.S * s.C;
  if (rows == 0) return;
  if (is_pointwise(s)) {
    gemm(false, true, static_cast<int>(rows), s.K, s.C, 1.f, x, s.C, w, s.C, 0.f, y, s.K);
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, kWorkspaceFloats / rsc));
  ScratchBuffer col(static_cast<size_t>(chunk * rsc));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t r1 = std::min(rows, r0 + chunk);
    im2col(pool(), col.get(), x, s, r0, r1);
    gemm(false, true, static_cast<int>(r1 - r0), s.K, rsc, 1.f, col.get(), rsc, w, rsc, 0.f, y + r0 * s.K, s.K);
  }
}

void CpuBackend::conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) {
  check_conv("conv2d_backward_data", s);
  if (s.N == 0) return;
  const int rsc = s.R * s.S * s.C;
  const int64_t pq = static_cast<int64_t>(s.P()) * s.Q();
  if (is_pointwise(s)) {
    gemm(false, false, static_cast<int>(s.N * pq), s.C, s.K, 1.f, dy, s.K, w, s.C, 0.f, dx, s.C);
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
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, kWorkspaceFloats / rsc));
  ScratchBuffer col(static_cast<size_t>(chunk * rsc));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t r1 = std::min(rows, r0 + chunk);
    im2col(pool(), col.get(), x, s, r0, r1);
    gemm(true, false, s.K, rsc, static_cast<int>(r1 - r0), 1.f, dy + r0 * s.K, s.K, col.get(), rsc, 1.f, dw, rsc);
  }
}

}  // namespace mveb
