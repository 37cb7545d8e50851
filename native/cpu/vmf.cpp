// vmf.cpp: CpuBackend::vmf_score, the vMF Stein score estimator of mveb-spec.md section 2.3, computed
// as it should be (not as the official code does):
//   S = Z Z^T                 lower triangle only, by row panels of gemm (N^2 D FLOP instead of 2 N^2 D)
//   tau = max(k-th largest of 1 - S over all N^2 entries (diagonal included), k = floor(N^2/2), min_width)
//                             exact linear-time radix selection (two 16-bit histogram passes over the
//                             lower triangle, off-diagonal entries counted twice), no sort
//   K = exp(S / tau), r = rowsum(K) (fp64 accumulation), A = K + eta I
//   G = (z / tau) * r         closed form of the N x N x D broadcast of the official code
//   A = L L^T                 blocked left-looking Cholesky, the panel update on gemm (N^3/3 FLOP)
//   score = -A^{-1} G         two blocked triangular solves on gemm (2 N^2 D FLOP); no inverse of A
//                             (only of the 112 x 112 triangular diagonal blocks of L, see below)
// fp32 storage and gemm (fp32 accumulation), fp64 for the diagonal blocks, row sums and the selection
// counts. The condition number of A is estimated from the factor (power iteration on L L^T for
// lambda_max, inverse iteration with two triangular solves per step for lambda_min; both converge
// from below/above so the estimate never overshoots by more than rounding). If the fp32 factorisation
// breaks down, the estimate exceeds vmf_float64_condition (fp32 would lose > ~1e-2 relative), or the
// result is not finite, everything is recomputed in float64 (vmf_score_float64: plain double loops,
// threaded); if that fails too, E_NUMERIC.
// FLOP: N^2 D (S) + N^3/3 (Cholesky) + 2 N^2 D (solves); at N = 4096, D = 2048 about 126 GFLOP.
// Tested by test/native/test_vmf.cpp ("loss: vmf ...") against a float64 reference and spec section 9;
// benchmarked by benchmarks/loss.js (npm run bench:loss).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/kernel_util.h"
#include "cpu/vmf_kernels.h"
#include "core/vmf_condition.h"

namespace mveb {

namespace vmf_detail {
namespace {
void axpy_portable(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
void scale_portable(float* y, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}
double dot_portable(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  double s = 0;
  for (; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  for (float v : acc) s += v;
  return s;
}
void daxpy_portable(double* y, double a, const double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
double ddot_portable(const double* a, const double* b, int64_t n) {
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) acc[l] += a[i + l] * b[i + l];
  double s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace
Prims prims_portable() { return Prims{axpy_portable, scale_portable, dot_portable, daxpy_portable, ddot_portable}; }
}  // namespace vmf_detail

namespace {

using vmf_detail::Prims;

constexpr int kBlock = 112;        // Cholesky / solve block: gemm depth of the updates; a multiple of 14 and 16 (micro-kernel rows)
constexpr int kPanelRows = 256;    // row panel of the S = Z Z^T gemm

// Monotone map float -> uint32 (a < b as floats  <=>  key(a) < key(b)); no NaN reaches it.
inline uint32_t float_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float key_float(uint32_t k) {
  uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The k-th smallest (1-based) entry of the symmetric matrix whose lower triangle is in S (row stride
// ld), over all N^2 entries. Radix selection on the order-preserving keys, 16 bits per pass; each
// strictly-lower entry counts twice. Exact, O(N^2) work, threaded.
float select_kth_smallest_symmetric(ThreadPool& pool, const float* S, int N, int64_t ld, uint64_t k) {
  const int T = pool.size();
  const int64_t row_tasks = (N + 31) / 32;
  std::vector<uint64_t> hist(static_cast<size_t>(T) << 16);
  uint32_t prefix = 0;
  for (int pass = 0; pass < 2; ++pass) {
    std::fill(hist.begin(), hist.end(), 0);
    pool.parallel_tasks(row_tasks, [&](int64_t task, int t) {
      uint64_t* h = hist.data() + (static_cast<size_t>(t) << 16);
      const int i1 = std::min<int>(N, static_cast<int>(task + 1) * 32);
      for (int i = static_cast<int>(task) * 32; i < i1; ++i) {
        const float* row = S + i * ld;
        if (pass == 0) {
          for (int j = 0; j < i; ++j) h[float_key(row[j]) >> 16] += 2;
          h[float_key(row[i]) >> 16] += 1;
        } else {
          for (int j = 0; j <= i; ++j) {
            const uint32_t key = float_key(row[j]);
            if ((key >> 16) == prefix) h[key & 0xFFFFu] += (j == i) ? 1 : 2;
          }
        }
      }
    });
    for (int t = 1; t < T; ++t)
      for (size_t b = 0; b < 65536; ++b) hist[b] += hist[(static_cast<size_t>(t) << 16) + b];
    uint64_t cumulative = 0;
    uint32_t bin = 0;
    for (; bin < 65536; ++bin) {
      if (cumulative + hist[bin] >= k) break;
      cumulative += hist[bin];
    }
    k -= cumulative;
    prefix = pass == 0 ? bin : ((prefix << 16) | bin);
  }
  return key_float(prefix);
}

// Triangular solves with the diagonal blocks go through gemm too: each kb x kb diagonal block L_kk is
// factored in double and inverted there (a triangular inverse, kb^3/3 FLOP, stored in fp32), and
// applied as a kb-deep gemm. This is the standard blocked-TRSM device (an inverse of small triangular
// blocks of the factor, never of K); it replaces kb^2/2 row axpys per row block (memory bound, ~4x
// slower than gemm at this block size) and keeps fp32 accuracy: the blocks are as well conditioned as the
// factor, whose condition is sqrt(cond(K + eta I)) <= ~300 before the float64 fallback.

// Factors the kb x kb block (lower triangle of A, row stride lda) in double: writes L_kk back into A
// and its inverse into inv (kb x kb, zero above the diagonal). False on a non-positive pivot.
bool factor_diagonal_block(float* A, int64_t lda, int kb, std::vector<double>& blk, float* inv) {
  for (int i = 0; i < kb; ++i)
    for (int j = 0; j <= i; ++j) blk[i * kb + j] = A[i * lda + j];
  for (int j = 0; j < kb; ++j) {
    double d = blk[j * kb + j];
    for (int m = 0; m < j; ++m) d -= blk[j * kb + m] * blk[j * kb + m];
    if (!(d > 0) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    blk[j * kb + j] = ljj;
    for (int i = j + 1; i < kb; ++i) {
      double s = blk[i * kb + j];
      for (int m = 0; m < j; ++m) s -= blk[i * kb + m] * blk[j * kb + m];
      blk[i * kb + j] = s / ljj;
    }
  }
  for (int i = 0; i < kb; ++i)
    for (int j = 0; j <= i; ++j) A[i * lda + j] = static_cast<float>(blk[i * kb + j]);
  // inverse of the lower-triangular factor, column by column: T[i][j] = -(sum_{j<=m<i} L[i][m] T[m][j]) / L[i][i]
  std::vector<double> t(static_cast<size_t>(kb) * kb, 0.0);
  for (int j = 0; j < kb; ++j) {
    t[j * kb + j] = 1.0 / blk[j * kb + j];
    for (int i = j + 1; i < kb; ++i) {
      double s = 0;
      for (int m = j; m < i; ++m) s += blk[i * kb + m] * t[m * kb + j];
      t[i * kb + j] = -s / blk[i * kb + i];
    }
  }
  for (size_t i = 0; i < t.size(); ++i) inv[i] = static_cast<float>(t[i]);
  return true;
}

// Blocked left-looking Cholesky of the lower triangle of A (N x N, row stride N) in place; the inverse
// of each diagonal block goes to inv (block b at inv + b * kBlock * kBlock). False on a non-positive or
// non-finite pivot.
bool cholesky_f32(CpuBackend& be, float* A, int N, float* inv) {
  std::vector<double> blk(static_cast<size_t>(kBlock) * kBlock);
  std::vector<float> panel;
  for (int k0 = 0; k0 < N; k0 += kBlock) {
    const int kb = std::min(kBlock, N - k0);
    float* Akk = A + static_cast<int64_t>(k0) * N + k0;
    float* inv_k = inv + static_cast<int64_t>(k0 / kBlock) * kBlock * kBlock;
    // A[k0:N, k0:k0+kb] -= L[k0:N, 0:k0] L[k0:k0+kb, 0:k0]^T
    if (k0 > 0)
      be.gemm_fp32(false, true, N - k0, kb, k0, -1.f, A + static_cast<int64_t>(k0) * N, N,
              A + static_cast<int64_t>(k0) * N, N, 1.f, Akk, N);
    if (!factor_diagonal_block(Akk, N, kb, blk, inv_k)) return false;
    // panel below: L[r, k0:k0+kb] = A[r, k0:k0+kb] L_kk^{-T}
    const int rows = N - k0 - kb;
    if (rows > 0) {
      panel.resize(static_cast<size_t>(rows) * kb);
      float* dst = Akk + static_cast<int64_t>(kb) * N;
      for (int r = 0; r < rows; ++r)
        std::memcpy(panel.data() + static_cast<size_t>(r) * kb, dst + static_cast<int64_t>(r) * N, kb * sizeof(float));
      be.gemm_fp32(false, true, rows, kb, kb, 1.f, panel.data(), kb, inv_k, kb, 0.f, dst, N);
    }
  }
  return true;
}

// X = (L L^T)^{-1} X in place for X [N, D] (row stride D), blocked on gemm (inv from cholesky_f32).
void cholesky_solve_f32(CpuBackend& be, const float* L, const float* inv, int N, float* X, int D) {
  std::vector<float> tmp(static_cast<size_t>(std::min(kBlock, N)) * D);
  auto apply_inverse = [&](int k0, int kb, bool transposed) {  // X_k = inv_k X_k (or inv_k^T X_k)
    float* Xk = X + static_cast<int64_t>(k0) * D;
    std::memcpy(tmp.data(), Xk, static_cast<size_t>(kb) * D * sizeof(float));
    be.gemm_fp32(transposed, false, kb, D, kb, 1.f, inv + static_cast<int64_t>(k0 / kBlock) * kBlock * kBlock, kb,
            tmp.data(), D, 0.f, Xk, D);
  };
  for (int k0 = 0; k0 < N; k0 += kBlock) {  // L Y = X
    const int kb = std::min(kBlock, N - k0);
    if (k0 > 0)
      be.gemm_fp32(false, false, kb, D, k0, -1.f, L + static_cast<int64_t>(k0) * N, N, X, D, 1.f,
              X + static_cast<int64_t>(k0) * D, D);
    apply_inverse(k0, kb, false);
  }
  const int last = ((N - 1) / kBlock) * kBlock;
  for (int k0 = last; k0 >= 0; k0 -= kBlock) {  // L^T X = Y
    const int kb = std::min(kBlock, N - k0), rest = N - k0 - kb;
    if (rest > 0)
      be.gemm_fp32(true, false, kb, D, rest, -1.f, L + static_cast<int64_t>(k0 + kb) * N + k0, N,
              X + static_cast<int64_t>(k0 + kb) * D, D, 1.f, X + static_cast<int64_t>(k0) * D, D);
    apply_inverse(k0, kb, true);
  }
}

void check_vmf_args(const char* op, int N, int D, float eta, float min_width) {
  MVEB_CHECK(N >= 2, "E_SHAPE", op, ": needs at least 2 rows (samples), found N = ", N);
  MVEB_CHECK(D >= 1, "E_SHAPE", op, ": needs at least 1 column, found D = ", D);
  MVEB_CHECK(std::isfinite(eta) && eta >= 0, "E_ARG", op, ": eta must be finite and >= 0, found ", eta);
  MVEB_CHECK(std::isfinite(min_width) && min_width > 0, "E_ARG", op, ": minWidth must be finite and > 0, found ",
             min_width);
}

void check_finite_input(const char* op, const float* z, int N, int D) {
  for (int64_t i = 0; i < static_cast<int64_t>(N) * D; ++i)
    if (!std::isfinite(z[i]))
      throw_error("E_NUMERIC", op, ": z contains a non-finite value (", z[i], " at row ", i / D, ", column ", i % D,
                  ")");
}

}  // namespace

VmfInfo CpuBackend::vmf_score(float* score, const float* z, int N, int D, float eta, float min_width) {
  check_vmf_args("vmf_score", N, D, eta, min_width);
  check_finite_input("vmf_score", z, N, D);
  const Prims p = vmf_detail::prims_for(isa());
  ScratchBuffer storage(static_cast<size_t>(N) * N);
  float* A = storage.get();

  // S = Z Z^T, lower triangle (plus the upper part of each diagonal panel, unused)
  for (int r0 = 0; r0 < N; r0 += kPanelRows) {
    const int m = std::min(kPanelRows, N - r0);
    gemm_fp32(false, true, m, r0 + m, D, 1.f, z + static_cast<int64_t>(r0) * D, D, z, D, 0.f,
         A + static_cast<int64_t>(r0) * N, N);
  }

  // width: k-th largest of 1 - S = 1 - (k-th smallest of S); 1 - s is monotone in float too
  const uint64_t k = static_cast<uint64_t>(N) * N / 2;
  const float s_k = select_kth_smallest_symmetric(pool(), A, N, N, k);
  VmfInfo info;
  info.width_raw = 1.f - s_k;
  info.width = std::max(info.width_raw, min_width);
  const float tau = info.width;

  // K = exp(S / tau) on the lower triangle; row sums of the full symmetric K in double
  const int T = pool().size();
  std::vector<double> colsum(static_cast<size_t>(T) * N, 0.0), rowsum(N, 0.0);
  pool().parallel_tasks((N + 15) / 16, [&](int64_t task, int t) {
    double* col = colsum.data() + static_cast<size_t>(t) * N;
    const int i1 = std::min<int>(N, static_cast<int>(task + 1) * 16);
    for (int i = static_cast<int>(task) * 16; i < i1; ++i) {
      float* row = A + static_cast<int64_t>(i) * N;
      double r = 0;
      for (int j = 0; j <= i; ++j) {
        const float kij = std::exp(row[j] / tau);
        row[j] = kij;
        r += kij;
        if (j < i) col[j] += kij;
      }
      rowsum[i] = r;
      row[i] += eta;
    }
  });
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < N; ++i) rowsum[i] += colsum[static_cast<size_t>(t) * N + i];

  // right-hand side -G = -(z / tau) r, solved in place into score
  pool().parallel_for(N, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const float c = static_cast<float>(-rowsum[i] / tau);
      const float* zi = z + i * D;
      float* si = score + i * D;
      for (int d = 0; d < D; ++d) si[d] = c * zi[d];
    }
  });

  std::vector<float> inverses(static_cast<size_t>((N + kBlock - 1) / kBlock) * kBlock * kBlock);
  bool ok = cholesky_f32(*this, A, N, inverses.data());
  if (ok) {
    info.condition = condition_estimate<float>(
        A, N, [&](const float* a, const float* b, int n) { return p.dot(a, b, n); },
        [&](float* y, float a, const float* x, int n) { p.axpy(y, a, x, n); });
    ok = std::isfinite(info.condition) && info.condition <= vmf_float64_condition;
  }
  if (ok) {
    cholesky_solve_f32(*this, A, inverses.data(), N, score, D);
    ok = all_finite(score, static_cast<size_t>(N) * D);
  }
  if (ok) return info;
  return vmf_score_float64(score, z, N, D, eta, min_width);
}

// The same estimator with every intermediate in double (S from the fp32 z with double products and
// sums). Used when fp32 is not accurate enough; O(N^2 D) plain loops on the vector primitives,
// threaded over rows / column strips, ~10x the fp32 path's time.
VmfInfo CpuBackend::vmf_score_float64(float* score, const float* z, int N, int D, float eta, float min_width) {
  check_vmf_args("vmf_score_float64", N, D, eta, min_width);
  check_finite_input("vmf_score_float64", z, N, D);
  const Prims p = vmf_detail::prims_for(isa());
  const int64_t NN = static_cast<int64_t>(N) * N;
  std::vector<double> A(NN), Zd(static_cast<size_t>(N) * D);
  for (int64_t i = 0; i < static_cast<int64_t>(N) * D; ++i) Zd[i] = z[i];
  pool().parallel_tasks((N + 7) / 8, [&](int64_t task, int) {
    const int i1 = std::min<int>(N, static_cast<int>(task + 1) * 8);
    for (int i = static_cast<int>(task) * 8; i < i1; ++i) {
      const double* zi = Zd.data() + static_cast<int64_t>(i) * D;
      for (int j = 0; j <= i; ++j) {
        const double s = p.ddot(zi, Zd.data() + static_cast<int64_t>(j) * D, D);
        A[static_cast<int64_t>(i) * N + j] = s;
        A[static_cast<int64_t>(j) * N + i] = s;
      }
    }
  });
  // width by selection on a copy of all N^2 entries
  std::vector<double> all(A);
  const int64_t k = NN / 2;
  std::nth_element(all.begin(), all.begin() + (k - 1), all.end());
  const double width_raw = 1.0 - all[k - 1];
  std::vector<double>().swap(all);
  const double tau = std::max(width_raw, static_cast<double>(min_width));
  VmfInfo info;
  info.width_raw = static_cast<float>(width_raw);
  info.width = static_cast<float>(tau);

  std::vector<double> rowsum(N);
  pool().parallel_for(N, 8, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      double* row = A.data() + i * N;
      double r = 0;
      for (int j = 0; j < N; ++j) {
        row[j] = std::exp(row[j] / tau);
        r += row[j];
      }
      rowsum[i] = r;
      row[i] += eta;
    }
  });
  auto fail = [&](int i, double pivot) {
    throw_error("E_NUMERIC", "vmf_score: K + eta*I is not positive definite even in float64 (pivot ", i, " = ", pivot,
                ", width = ", tau, ", eta = ", eta,
                "); expected finite, well-separated kernel values: is the width too small for exp(1/width) "
                "to stay finite, or eta = 0 with repeated rows?");
  };
  // Cholesky, column by column (right-looking by dots over row prefixes), in place in the lower triangle
  for (int j = 0; j < N; ++j) {
    double* rj = A.data() + static_cast<int64_t>(j) * N;
    double d = rj[j];
    for (int m = 0; m < j; ++m) d -= rj[m] * rj[m];
    if (!(d > 0) || !std::isfinite(d)) fail(j, d);
    const double ljj = std::sqrt(d);
    rj[j] = ljj;
    pool().parallel_for(N - j - 1, 64, [&](int64_t b, int64_t e, int) {
      for (int64_t i = j + 1 + b; i < j + 1 + e; ++i) {
        double* ri = A.data() + i * N;
        ri[j] = (ri[j] - p.ddot(ri, rj, j)) / ljj;
      }
    });
  }
  info.condition = condition_estimate<double>(
      A.data(), N, [&](const double* a, const double* b, int n) { return p.ddot(a, b, n); },
      [&](double* y, double a, const double* x, int n) { p.daxpy(y, a, x, n); });
  // X = -(z / tau) r, then L Y = X, L^T X = Y, threaded over column strips of D
  for (int i = 0; i < N; ++i) {
    const double c = -rowsum[i] / tau;
    for (int d = 0; d < D; ++d) Zd[static_cast<int64_t>(i) * D + d] *= c;
  }
  constexpr int kStrip = 128;  // columns per task: N rows x 1 KB stay in L2
  pool().parallel_tasks((D + kStrip - 1) / kStrip, [&](int64_t task, int) {
    const int c0 = static_cast<int>(task) * kStrip, w = std::min(kStrip, D - c0);
    for (int i = 0; i < N; ++i) {
      double* xi = Zd.data() + static_cast<int64_t>(i) * D + c0;
      const double* li = A.data() + static_cast<int64_t>(i) * N;
      for (int m = 0; m < i; ++m) p.daxpy(xi, -li[m], Zd.data() + static_cast<int64_t>(m) * D + c0, w);
      for (int c = 0; c < w; ++c) xi[c] /= li[i];
    }
    for (int i = N - 1; i >= 0; --i) {  // x_i = (y_i - sum_{m > i} L[m][i] x_m) / L[i][i]
      double* xi = Zd.data() + static_cast<int64_t>(i) * D + c0;
      for (int m = i + 1; m < N; ++m)
        p.daxpy(xi, -A[static_cast<int64_t>(m) * N + i], Zd.data() + static_cast<int64_t>(m) * D + c0, w);
      for (int c = 0; c < w; ++c) xi[c] /= A[static_cast<int64_t>(i) * N + i];
    }
  });
  for (int64_t i = 0; i < static_cast<int64_t>(N) * D; ++i) {
    score[i] = static_cast<float>(Zd[i]);
    if (!std::isfinite(score[i]))
      throw_error("E_NUMERIC", "vmf_score: the score is not finite in float64 (row ", i / D, "); expected a finite "
                  "result: the kernel values overflow (width ", tau, ")");
  }
  return info;
}

}  // namespace mveb
