// test_vmf.cpp: tests of the MVEB loss area: CpuBackend::vmf_score (fp32 and float64 paths),
// l2_normalize_rows_forward/backward and mveb_loss_forward (core/mveb_loss.h), against spec section 9
// and an independent float64 reference written here (sort for the width, LU with partial pivoting
// for the solve, the whole loss in double), plus finite differences in float64 for the gradients.
// Run: build/mveb_native_tests "loss:"   (npm run test:native runs everything; these take < 1 s)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/mveb_loss.h"
#include "core/random.h"
#include "cpu/cpu_backend.h"
#include "harness.h"

using namespace mveb;

namespace {

CpuBackend& cpu() { return static_cast<CpuBackend&>(mtest::runtime().cpu()); }

Tensor make_tensor(Backend& be, const std::vector<float>& v, int64_t rows, int64_t cols) {
  Tensor t = empty_tensor(be, {rows, cols});
  be.upload(t.f32(), v.data(), v.size() * sizeof(float));
  return t;
}
std::vector<float> to_vector(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  t.backend().download(v.data(), t.f32(), v.size() * sizeof(float));
  return v;
}
std::vector<float> unit_rows(std::vector<float> z, int N, int D) {
  for (int i = 0; i < N; ++i) {
    double s = 0;
    for (int d = 0; d < D; ++d) s += double(z[i * D + d]) * z[i * D + d];
    for (int d = 0; d < D; ++d) z[i * D + d] = static_cast<float>(z[i * D + d] / std::sqrt(s));
  }
  return z;
}
std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(normal01(seed, i));
  return v;
}

// ---------------- float64 reference (independent of the implementation) ----------------
struct Lu {  // PA = LU with partial pivoting
  int n;
  std::vector<double> a;
  std::vector<int> perm;
  explicit Lu(std::vector<double> m, int n_) : n(n_), a(std::move(m)), perm(n_) {
    for (int i = 0; i < n; ++i) perm[i] = i;
    for (int k = 0; k < n; ++k) {
      int p = k;
      for (int i = k + 1; i < n; ++i)
        if (std::fabs(a[i * n + k]) > std::fabs(a[p * n + k])) p = i;
      if (p != k) {
        for (int j = 0; j < n; ++j) std::swap(a[k * n + j], a[p * n + j]);
        std::swap(perm[k], perm[p]);
      }
      for (int i = k + 1; i < n; ++i) {
        double f = a[i * n + k] /= a[k * n + k];
        for (int j = k + 1; j < n; ++j) a[i * n + j] -= f * a[k * n + j];
      }
    }
  }
  // solves A X = B in place for B [n, m]
  void solve(std::vector<double>& B, int m) const {
    std::vector<double> X(static_cast<size_t>(n) * m);
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < m; ++c) X[i * m + c] = B[perm[i] * m + c];
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < i; ++k) {
        const double f = a[i * n + k];
        for (int c = 0; c < m; ++c) X[i * m + c] -= f * X[k * m + c];
      }
    for (int i = n - 1; i >= 0; --i) {
      for (int k = i + 1; k < n; ++k) {
        const double f = a[i * n + k];
        for (int c = 0; c < m; ++c) X[i * m + c] -= f * X[k * m + c];
      }
      for (int c = 0; c < m; ++c) X[i * m + c] /= a[i * n + i];
    }
    B.swap(X);
  }
};

struct RefVmf {
  std::vector<double> score;
  double width = 0, width_raw = 0, condition = 0;
};

RefVmf ref_vmf(const std::vector<double>& Z, int N, int D, double eta = 0.01, double min_width = 0.1,
               bool want_condition = false) {
  std::vector<double> S(static_cast<size_t>(N) * N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int d = 0; d < D; ++d) s += Z[i * D + d] * Z[j * D + d];
      S[i * N + j] = s;
    }
  std::vector<double> dist(S.size());
  for (size_t i = 0; i < S.size(); ++i) dist[i] = 1.0 - S[i];
  std::sort(dist.begin(), dist.end(), std::greater<double>());
  RefVmf r;
  r.width_raw = dist[static_cast<size_t>(N) * N / 2 - 1];
  r.width = std::max(r.width_raw, min_width);
  std::vector<double> K(S.size()), rowsum(N, 0.0);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      K[i * N + j] = std::exp(S[i * N + j] / r.width);
      rowsum[i] += K[i * N + j];
    }
  for (int i = 0; i < N; ++i) K[i * N + i] += eta;
  Lu lu(K, N);
  r.score.resize(static_cast<size_t>(N) * D);
  for (int i = 0; i < N; ++i)
    for (int d = 0; d < D; ++d) r.score[i * D + d] = Z[i * D + d] / r.width * rowsum[i];
  lu.solve(r.score, D);
  for (double& v : r.score) v = -v;
  if (want_condition) {  // cond_2 by long power / inverse iteration (symmetric positive definite)
    std::vector<double> v(N, 1.0), w(N);
    double lmax = 0, inv_lmin = 0;
    for (int it = 0; it < 300; ++it) {
      for (int i = 0; i < N; ++i) {
        w[i] = 0;
        for (int j = 0; j < N; ++j) w[i] += K[i * N + j] * v[j];
      }
      double n2 = 0;
      for (double a : w) n2 += a * a;
      lmax = std::sqrt(n2);
      for (int i = 0; i < N; ++i) v[i] = w[i] / lmax;
    }
    for (int i = 0; i < N; ++i) v[i] = std::sin(1.0 + 3.0 * i);
    for (int it = 0; it < 300; ++it) {
      lu.solve(v, 1);
      double n2 = 0;
      for (double a : v) n2 += a * a;
      inv_lmin = std::sqrt(n2);
      for (double& a : v) a /= inv_lmin;
    }
    r.condition = lmax * inv_lmin;
  }
  return r;
}

std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// The whole loss in double. u: V online [N, D], tg: 2 targets; scores (if given, one per view) are held
// fixed (the estimator's stop-gradient); otherwise computed by ref_vmf per group. Returns the loss and
// (optionally) the analytic gradients.
struct RefLoss {
  double loss = 0, alignment = 0, entropy = 0;
  std::vector<double> surrogates;
  std::vector<std::vector<double>> scores, grads;
  std::vector<double> widths;
};
std::vector<double> normalize_d(const std::vector<double>& u, int N, int D, std::vector<double>* norms = nullptr) {
  std::vector<double> z(u.size());
  if (norms) norms->resize(N);
  for (int i = 0; i < N; ++i) {
    double s = 0;
    for (int d = 0; d < D; ++d) s += u[i * D + d] * u[i * D + d];
    const double n = std::sqrt(s);
    if (norms) (*norms)[i] = n;
    for (int d = 0; d < D; ++d) z[i * D + d] = u[i * D + d] / std::max(n, 1e-12);
  }
  return z;
}
double mean_dot(const std::vector<double>& a, const std::vector<double>& b, int N) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s / N;
}
RefLoss ref_loss(const std::vector<std::vector<double>>& u, const std::vector<std::vector<double>>& tg, int N, int D,
                 double lambda, int group_size, const std::vector<std::vector<double>>* fixed_scores) {
  const int V = static_cast<int>(u.size());
  const int gs = group_size <= 0 ? N : group_size;
  RefLoss r;
  std::vector<double> t0 = normalize_d(tg[0], N, D), t1 = normalize_d(tg[1], N, D);
  std::vector<double> tm(t0.size());
  for (size_t i = 0; i < tm.size(); ++i) tm[i] = 0.5 * (t0[i] + t1[i]);
  double A = 0, U = 0;
  for (int v = 0; v < V; ++v) {
    std::vector<double> norms;
    std::vector<double> z = normalize_d(u[v], N, D, &norms);
    const std::vector<double>& target = v == 0 ? t1 : v == 1 ? t0 : tm;
    A += mean_dot(z, target, N);
    std::vector<double> s;
    if (fixed_scores) {
      s = (*fixed_scores)[v];
    } else {
      s.resize(z.size());
      for (int g = 0; g < N / gs; ++g) {
        std::vector<double> zg(z.begin() + g * gs * D, z.begin() + (g + 1) * gs * D);
        RefVmf rv = ref_vmf(zg, gs, D);
        std::copy(rv.score.begin(), rv.score.end(), s.begin() + g * gs * D);
        r.widths.push_back(rv.width);
      }
    }
    const double H = -mean_dot(s, z, N);
    r.surrogates.push_back(H);
    U += H;
    // gradient: dL/dz = -target/(VN) + lambda s/(VN); through normalisation
    std::vector<double> grad(z.size());
    for (int i = 0; i < N; ++i) {
      double gz[4096];
      double dot = 0;
      for (int d = 0; d < D; ++d) {
        gz[d] = (-target[i * D + d] + lambda * s[i * D + d]) / (double(V) * N);
        dot += gz[d] * z[i * D + d];
      }
      for (int d = 0; d < D; ++d) grad[i * D + d] = (gz[d] - z[i * D + d] * dot) / norms[i];
    }
    r.scores.push_back(s);
    r.grads.push_back(grad);
  }
  r.alignment = A / V;
  r.entropy = U / V;
  r.loss = -r.alignment - lambda * r.entropy;
  return r;
}

double rel_err_d(const std::vector<float>& a, const std::vector<double>& b) { return mtest::rel_error(a.data(), b.data(), a.size()); }

const std::vector<float> kExample1 = {1, 0, 0, 0, 1, 0, 0.6f, 0.8f, 0, 0, 0.6f, 0.8f};
const std::vector<double> kExample1Score = {-2.573913163006, 1.358728884977,  0.129525186122,  2.529171754952,
                                            -3.284534300240, 1.309914099718,  -4.059658329842, -2.802316204601,
                                            0.248287443958,  0.386917728930,  -0.722649518282, -4.001896273159};

double surrogate(const std::vector<float>& s, const std::vector<float>& z, int N) {
  double acc = 0;
  for (size_t i = 0; i < s.size(); ++i) acc -= double(s[i]) * z[i];
  return acc / N;
}

// mean over pairs i != j of 1 - z_i . z_j (how spread a batch is)
double spread(const std::vector<double>& z, int N, int D) {
  double acc = 0;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j)
      if (i != j) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += z[i * D + d] * z[j * D + d];
        acc += 1 - s;
      }
  return acc / (double(N) * (N - 1));
}

// Tolerance of the fp32 estimator vs float64: 1e-5 on well-conditioned batches (cond <= 1e3, the
// issue's bar); beyond, the forward error of any fp32 solve grows like cond * eps (eps = 6e-8; 2x
// margin), up to CpuBackend::vmf_float64_condition where the float64 fallback takes over.
double fp32_tolerance(double cond) {
  return cond <= 1e3 ? 1e-5 : std::max(1e-5, std::min(cond, CpuBackend::vmf_float64_condition) * 1.2e-7);
}

// Runs the fp32 estimator with the output poisoned first.
std::vector<float> run_vmf(const std::vector<float>& z, int N, int D, VmfInfo* info, float eta = 0.01f,
                           float min_width = 0.1f, bool float64 = false) {
  std::vector<float> score(z.size(), std::numeric_limits<float>::quiet_NaN());
  *info = float64 ? cpu().vmf_score_float64(score.data(), z.data(), N, D, eta, min_width)
                  : cpu().vmf_score(score.data(), z.data(), N, D, eta, min_width);
  return score;
}

}  // namespace

TEST("loss: vmf spec example 1 (N = 4, d = 3)") {
  VmfInfo info;
  std::vector<float> s = run_vmf(kExample1, 4, 3, &info);
  EXPECT_REL(rel_err_d(s, kExample1Score), 1e-5, "score vs spec fixture");
  EXPECT_TRUE(std::fabs(info.width - 0.4) < 1e-6 && std::fabs(info.width_raw - 0.4) < 1e-6, "width " << info.width);
  EXPECT_REL(std::fabs(surrogate(s, kExample1, 4) - 3.5428005385821155) / 3.5428005385821155, 1e-5, "surrogate");
  EXPECT_TRUE(info.condition > 0.5 * 6.11398 && info.condition < 6.11398 * 1.001, "condition " << info.condition);
  VmfInfo info64;
  std::vector<float> s64 = run_vmf(kExample1, 4, 3, &info64, 0.01f, 0.1f, true);
  EXPECT_REL(rel_err_d(s64, kExample1Score), 2e-7, "float64 path score vs spec fixture");
  EXPECT_TRUE(info64.condition > 0.5 * 6.11398 && info64.condition < 6.11398 * 1.0001, "cond " << info64.condition);
}

TEST("loss: vmf spec example 2 (clamped width)") {
  std::vector<float> z = unit_rows({1, 0.1f, 0, 1, 0, 0.1f, 1, -0.1f, 0, 1, 0, -0.1f}, 4, 3);
  VmfInfo info;
  std::vector<float> s = run_vmf(z, 4, 3, &info);
  EXPECT_TRUE(info.width == 0.1f, "width " << info.width);
  EXPECT_REL(std::fabs(info.width_raw - 0.00990099) / 0.00990099, 1e-4, "raw width");
  // spec: rows (-9.95037, -+20.1161, 0) and (-9.95037, 0, -+20.1161) (inputs in the order of the spec script)
  const std::vector<double> expect = {-9.95037, -20.1161, 0, -9.95037, 0, -20.1161, -9.95037, 20.1161, 0,
                                      -9.95037, 0,        20.1161};
  EXPECT_REL(rel_err_d(s, expect), 1e-5, "score vs spec (6 digits)");
  RefVmf ref = ref_vmf(to_double(z), 4, 3, 0.01, 0.1, true);
  EXPECT_REL(rel_err_d(s, ref.score), 1e-5, "score vs float64 reference");
  EXPECT_REL(std::fabs(surrogate(s, z, 4) - 11.9026) / 11.9026, 1e-5, "surrogate");
  EXPECT_REL(std::fabs(ref.condition - 408.686) / 408.686, 1e-5, "reference condition vs spec");
  EXPECT_TRUE(info.condition > 0.5 * 408.686 && info.condition < 408.686 * 1.001, "condition " << info.condition);
}

TEST("loss: mveb spec example 3 (full loss, V = 2)") {
  Backend& be = cpu();
  std::vector<float> z2 = {0.8f, 0.6f, 0, 0, 0.8f, 0.6f, 0, 0, 1, 0.6f, 0, 0.8f};
  std::vector<float> tb1 = {1, 0, 0, 0, 0.6f, 0.8f, 0.8f, 0.6f, 0, 0, 0, 1};
  std::vector<float> tb2 = {0.8f, 0, 0.6f, 0, 1, 0, 0, 0.8f, 0.6f, 0, 0.6f, 0.8f};
  MvebLossOptions o;
  MvebLossResult r = mveb_loss_forward({make_tensor(be, kExample1, 4, 3), make_tensor(be, z2, 4, 3)},
                                       {make_tensor(be, tb1, 4, 3), make_tensor(be, tb2, 4, 3)}, o);
  EXPECT_REL(std::fabs(r.loss + 0.784131) / 0.784131, 1e-5, "loss vs spec -0.784131");
  EXPECT_REL(std::fabs(r.alignment - 0.75) / 0.75, 1e-6, "alignment");
  EXPECT_REL(std::fabs(r.entropy - 3.41309) / 3.41309, 1e-5, "entropy");
  EXPECT_REL(std::fabs(r.surrogates[0] - 3.5428005385821155) / 3.5428, 1e-5, "H(z1)");
  EXPECT_REL(std::fabs(r.surrogates[1] - 3.28338) / 3.28338, 1e-5, "H(z2)");
  REQUIRE(r.estimates.size() == 2 && r.grads.size() == 2);
  EXPECT_TRUE(std::fabs(r.estimates[0].width - 0.4f) < 1e-6, "width " << r.estimates[0].width);
  RefLoss ref = ref_loss({to_double(kExample1), to_double(z2)}, {to_double(tb1), to_double(tb2)}, 4, 3, 0.01, 0,
                         nullptr);
  EXPECT_REL(std::fabs(r.loss - ref.loss) / std::fabs(ref.loss), 1e-6, "loss vs float64 reference");
  for (int v = 0; v < 2; ++v) EXPECT_REL(rel_err_d(to_vector(r.grads[v]), ref.grads[v]), 1e-5, "grad " << v);
}

TEST("loss: l2 normalize rows forward/backward vs float64 and finite differences") {
  Backend& be = cpu();
  const int N = 7, D = 13;
  std::vector<float> x = mtest::random_vector(N * D, 11, -2.f, 2.f), dy = mtest::random_vector(N * D, 12);
  for (int d = 0; d < D; ++d) x[3 * D + d] = 0.f;  // a zero row: y = 0, dx = dy / eps
  std::vector<float> y(N * D, NAN), norms(N, NAN), dx(N * D, NAN);
  be.l2_normalize_rows_forward(y.data(), norms.data(), x.data(), N, D, 1e-12f);
  be.l2_normalize_rows_backward(dx.data(), dy.data(), y.data(), norms.data(), N, D, 1e-12f);
  std::vector<double> xd = to_double(x), yref = normalize_d(xd, N, D);
  EXPECT_REL(rel_err_d(y, yref), 1e-6, "forward");
  EXPECT_TRUE(norms[3] == 0.f, "zero-row norm " << norms[3]);
  // finite differences of f(x) = sum dy . normalize(x) on the non-zero rows
  std::vector<double> fd, got;
  for (int i = 0; i < N; ++i) {
    if (i == 3) continue;
    for (int d = 0; d < D; ++d) {
      auto f = [&](double h) {
        std::vector<double> xp = xd;
        xp[i * D + d] += h;
        std::vector<double> yp = normalize_d(xp, N, D);
        double s = 0;
        for (int e = 0; e < D; ++e) s += dy[i * D + e] * yp[i * D + e];
        return s;
      };
      fd.push_back((f(1e-6) - f(-1e-6)) / 2e-6);
      got.push_back(dx[i * D + d]);
    }
  }
  EXPECT_REL(mtest::rel_error(got.data(), fd.data(), got.size()), 1e-5, "backward vs finite differences");
  for (int d = 0; d < D; ++d) EXPECT_TRUE(std::fabs(dx[3 * D + d] - dy[3 * D + d] * 1e12f) <= 1e6f, "zero row");
}

TEST("loss: mveb gradients vs finite differences in float64 (N, D, V, local views, groups)") {
  Backend& be = cpu();
  struct Case {
    int N, D, V, group;
  };
  const Case cases[] = {{4, 3, 2, 0}, {6, 5, 3, 0}, {8, 7, 4, 4}, {5, 16, 2, 0}, {12, 9, 5, 3}, {9, 33, 8, 0}};
  uint64_t seed = 100;
  for (const Case& c : cases) {
    const int N = c.N, D = c.D, V = c.V;
    std::vector<std::vector<float>> uf;
    std::vector<std::vector<double>> ud, td;
    std::vector<Tensor> online, targets;
    for (int v = 0; v < V + 2; ++v) {
      std::vector<float> x = gaussian(N * D, seed++);
      for (float& a : x) a = 0.7f * a + 0.2f;  // not unit norm, not centred
      (v < V ? online : targets).push_back(make_tensor(be, x, N, D));
      (v < V ? ud : td).push_back(to_double(x));
    }
    MvebLossOptions o;
    o.lambda = 0.05;  // larger than the default so the entropy term weighs in the gradient check
    o.group_size = c.group;
    MvebLossResult r = mveb_loss_forward(online, targets, o);
    RefLoss ref = ref_loss(ud, td, N, D, o.lambda, c.group, nullptr);
    EXPECT_REL(std::fabs(r.loss - ref.loss) / std::fabs(ref.loss), 1e-5, "loss N=" << N << " D=" << D << " V=" << V);
    EXPECT_REL(std::fabs(r.alignment - ref.alignment) / std::fabs(ref.alignment), 1e-5, "alignment");
    EXPECT_REL(std::fabs(r.entropy - ref.entropy) / std::fabs(ref.entropy), 1e-5, "entropy");
    REQUIRE(static_cast<int>(r.estimates.size()) == V * r.groups);
    for (size_t k = 0; k < r.estimates.size(); ++k)
      EXPECT_TRUE(std::fabs(r.estimates[k].width - ref.widths[k]) <= 1e-6 * ref.widths[k] + 1e-7, "width " << k);
    for (int v = 0; v < V; ++v) {
      // finite differences of the float64 loss with the scores held fixed (the stop-gradient)
      std::vector<double> fd(static_cast<size_t>(N) * D);
      for (int i = 0; i < N * D; ++i) {
        auto f = [&](double h) {
          std::vector<std::vector<double>> up = ud;
          up[v][i] += h;
          return ref_loss(up, td, N, D, o.lambda, c.group, &ref.scores).loss;
        };
        fd[i] = (f(1e-5) - f(-1e-5)) / 2e-5;
      }
      EXPECT_REL(mtest::rel_error(ref.grads[v].data(), fd.data(), fd.size()), 1e-7, "reference grad vs FD, view " << v);
      EXPECT_REL(rel_err_d(to_vector(r.grads[v]), fd), 1e-5,
                 "grad vs FD, N=" << N << " D=" << D << " V=" << V << " view " << v);
    }
  }
}

TEST("loss: vmf random batches vs float64 reference, N in {2,3,17,256} x D in {3,128,2048}") {
  const int Ns[] = {2, 3, 17, 256}, Ds[] = {3, 128, 2048};
  uint64_t seed = 500;
  for (int N : Ns)
    for (int D : Ds) {
      std::vector<float> z = unit_rows(gaussian(static_cast<size_t>(N) * D, seed++), N, D);
      VmfInfo info;
      std::vector<float> s = run_vmf(z, N, D, &info);
      RefVmf ref = ref_vmf(to_double(z), N, D, 0.01, 0.1, N <= 17 || D > 3);
      // fp32 forward error grows like cond * eps; the fallback to float64 caps it for cond > 1e5
      const double cond = ref.condition > 0 ? ref.condition : info.condition;
      const double tol = fp32_tolerance(cond);
      EXPECT_REL(rel_err_d(s, ref.score), tol, "score N=" << N << " D=" << D << " cond " << cond);
      EXPECT_TRUE(std::fabs(info.width - ref.width) <= 1e-6 * ref.width, "width N=" << N << " D=" << D << ": " << info.width <<
                  " vs " << ref.width);
      if (ref.condition > 0)
        EXPECT_TRUE(info.condition >= 0.3 * ref.condition && info.condition <= 1.01 * ref.condition,
                    "condition estimate N=" << N << " D=" << D << ": " << info.condition << " vs " << ref.condition);
    }
}

TEST("loss: vmf portable (scalar ISA) path agrees with the reference") {
  CpuBackend be(2);
  be.force_isa(Isa::Scalar);
  const int N = 150, D = 70;  // odd sizes: partial blocks and strips
  std::vector<float> z = unit_rows(gaussian(N * D, 77), N, D);
  std::vector<float> s(z.size(), NAN);
  VmfInfo info = be.vmf_score(s.data(), z.data(), N, D, 0.01f, 0.1f);
  RefVmf ref = ref_vmf(to_double(z), N, D, 0.01, 0.1, true);
  REQUIRE(ref.condition < 1e3, "test batch should be well conditioned, cond " << ref.condition);
  EXPECT_REL(rel_err_d(s, ref.score), 1e-5, "scalar path score");
  EXPECT_TRUE(std::fabs(info.width - ref.width) <= 1e-6 * ref.width, "width");
}

TEST("loss: vmf stays fp32 at matmul precision high (bitwise equal to highest)") {
  // Its Cholesky and solves would amplify bf16x3 error by the condition number (gemm_fp32).
  CpuBackend high(2), highest(2);
  high.set_matmul_precision(mveb::MatmulPrecision::High);
  highest.set_matmul_precision(mveb::MatmulPrecision::Highest);
  const int N = 512, D = 256;  // products well above the AMX threshold
  std::vector<float> z = unit_rows(gaussian(N * D, 78), N, D);
  std::vector<float> a(z.size(), NAN), b(z.size(), NAN);
  high.vmf_score(a.data(), z.data(), N, D, 0.01f, 0.1f);
  highest.vmf_score(b.data(), z.data(), N, D, 0.01f, 0.1f);
  EXPECT_TRUE(a == b, "vmf_score at high differs from highest" << (high.amx() ? "" : " (no AMX here: trivially equal)"));
}

TEST("loss: vmf clustered batch: finite, ill-conditioning reported, entropy step spreads the batch") {
  const int N = 48, D = 16;
  std::vector<float> mu = gaussian(D, 900), noise = gaussian(N * D, 901), z(N * D);
  for (int i = 0; i < N; ++i)
    for (int d = 0; d < D; ++d) z[i * D + d] = mu[d] + 0.02f * noise[i * D + d];
  z = unit_rows(z, N, D);
  VmfInfo info;
  std::vector<float> s = run_vmf(z, N, D, &info);
  EXPECT_TRUE(info.width == 0.1f && info.width_raw < 0.1f, "width should clamp, raw " << info.width_raw);
  EXPECT_TRUE(info.condition > 1e4, "condition should flag the collapse, found " << info.condition);
  for (float v : s) REQUIRE(std::isfinite(v), "score not finite");
  RefVmf ref = ref_vmf(to_double(z), N, D, 0.01, 0.1);
  EXPECT_REL(rel_err_d(s, ref.score), 1e-3, "clustered score vs float64 (fp64 fallback or cond-limited fp32)");
  // a small step along the entropy gradient dH/dz = -s / N spreads the batch
  std::vector<double> zd = to_double(z), step(zd.size());
  double smax = 0;
  for (float v : s) smax = std::max(smax, double(std::fabs(v)));
  for (size_t i = 0; i < zd.size(); ++i) step[i] = zd[i] - 1e-3 / smax * s[i];
  std::vector<double> z2 = normalize_d(step, N, D);
  const double before = spread(zd, N, D), after = spread(z2, N, D);
  EXPECT_TRUE(after > before * 1.0001, "spread before " << before << " after " << after);
}

TEST("loss: vmf edge cases: identical rows (float64 fallback), two clusters, D = 1") {
  {  // all rows identical: K = k 1 1^T, score_i = -(N k / tau) / (N k + eta) z_i exactly
    const int N = 8, D = 5;
    std::vector<float> row = unit_rows(mtest::random_vector(D, 5), 1, D), z;
    for (int i = 0; i < N; ++i) z.insert(z.end(), row.begin(), row.end());
    VmfInfo info;
    std::vector<float> s = run_vmf(z, N, D, &info);
    double zz = 0;
    for (int d = 0; d < D; ++d) zz += double(row[d]) * row[d];
    const double k = std::exp(zz / 0.1), c = -(N * k / 0.1) / (N * k + 0.01);
    std::vector<double> expect(z.size());
    for (size_t i = 0; i < z.size(); ++i) expect[i] = c * z[i];
    EXPECT_REL(rel_err_d(s, expect), 1e-6, "identical rows");
    EXPECT_TRUE(info.width == 0.1f, "width " << info.width);
    EXPECT_TRUE(info.condition > 1e6, "condition of the collapsed batch " << info.condition);
  }
  {  // two tight clusters around orthogonal directions: width ~ 1 (cross pairs are half the entries)
    const int N = 16, D = 4;
    std::vector<float> z(N * D), noise = gaussian(N * D, 31);
    for (int i = 0; i < N; ++i)
      for (int d = 0; d < D; ++d) z[i * D + d] = (d == (i < N / 2 ? 0 : 1) ? 1.f : 0.f) + 0.01f * noise[i * D + d];
    z = unit_rows(z, N, D);
    VmfInfo info;
    std::vector<float> s = run_vmf(z, N, D, &info);
    RefVmf ref = ref_vmf(to_double(z), N, D, 0.01, 0.1, true);
    EXPECT_TRUE(info.width > 0.9 && info.width < 1.1, "two-cluster width " << info.width);
    EXPECT_REL(rel_err_d(s, ref.score), fp32_tolerance(ref.condition), "two clusters");
    std::vector<double> zd = to_double(z), step(zd.size());
    for (size_t i = 0; i < zd.size(); ++i) step[i] = zd[i] - 1e-4 * s[i];
    EXPECT_TRUE(spread(normalize_d(step, N, D), N, D) > spread(zd, N, D), "two clusters spread");
  }
  {  // D = 1: rows are +-1
    const int N = 6, D = 1;
    std::vector<float> z = {1, -1, 1, 1, -1, 1};
    VmfInfo info;
    std::vector<float> s = run_vmf(z, N, D, &info);
    RefVmf ref = ref_vmf(to_double(z), N, D);
    EXPECT_REL(rel_err_d(s, ref.score), 1e-5, "D = 1");
    EXPECT_TRUE(info.width == static_cast<float>(ref.width), "D = 1 width " << info.width << " vs " << ref.width);
  }
  {  // N = 2 (k = 2: the 2nd largest of {0, 0, d, d} is d)
    std::vector<float> z = unit_rows({1, 2, 3, -1, 0.5f, 2}, 2, 3);
    VmfInfo info;
    std::vector<float> s = run_vmf(z, 2, 3, &info);
    RefVmf ref = ref_vmf(to_double(z), 2, 3);
    EXPECT_REL(rel_err_d(s, ref.score), 1e-5, "N = 2");
  }
}

TEST("loss: mveb groupSize splits the estimator per group") {
  Backend& be = cpu();
  const int N = 12, D = 6, V = 3;
  std::vector<Tensor> online, targets;
  std::vector<std::vector<double>> ud, td;
  for (int v = 0; v < V + 2; ++v) {
    std::vector<float> x = gaussian(N * D, 700 + v);
    (v < V ? online : targets).push_back(make_tensor(be, x, N, D));
    (v < V ? ud : td).push_back(to_double(x));
  }
  for (int g : {0, 12, 6, 4, 2}) {
    MvebLossOptions o;
    o.group_size = g;
    MvebLossResult r = mveb_loss_forward(online, targets, o);
    RefLoss ref = ref_loss(ud, td, N, D, o.lambda, g, nullptr);
    EXPECT_TRUE(r.groups == (g == 0 ? 1 : N / g), "groups " << r.groups);
    EXPECT_REL(std::fabs(r.entropy - ref.entropy) / std::fabs(ref.entropy), 1e-5, "entropy with groupSize " << g);
    EXPECT_REL(std::fabs(r.loss - ref.loss) / std::fabs(ref.loss), 1e-5, "loss with groupSize " << g);
    for (int v = 0; v < V; ++v) EXPECT_REL(rel_err_d(to_vector(r.grads[v]), ref.grads[v]), 1e-5, "grad " << v);
  }
  MvebLossResult a = mveb_loss_forward(online, targets, MvebLossOptions{0.01, 0.01f, 0.1f, 4});
  MvebLossResult b = mveb_loss_forward(online, targets, MvebLossOptions{0.01, 0.01f, 0.1f, 0});
  EXPECT_TRUE(std::fabs(a.entropy - b.entropy) > 1e-3 * std::fabs(b.entropy), "groups must change the estimate");
}

TEST("loss: bad input gives mveb::Error codes") {
  Backend& be = cpu();
  auto T = [&](int n, int d, float fill = 0.5f) { return make_tensor(be, std::vector<float>(n * d, fill), n, d); };
  std::vector<float> good = gaussian(4 * 3, 3);
  Tensor g1 = make_tensor(be, good, 4, 3), g2 = make_tensor(be, gaussian(12, 4), 4, 3);
  MvebLossOptions o;
  EXPECT_THROWS_CODE(mveb_loss_forward({g1}, {g1, g2}, o), "E_ARG");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, g2}, {g1}, o), "E_ARG");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, g2}, {g1, g2, g1}, o), "E_ARG");
  EXPECT_THROWS_CODE(mveb_loss_forward({T(1, 3), T(1, 3)}, {T(1, 3), T(1, 3)}, o), "E_SHAPE");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, T(4, 4)}, {g1, g2}, o), "E_SHAPE");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, g2}, {g1, T(5, 3)}, o), "E_SHAPE");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, T(4, 3, NAN)}, {g1, g2}, o), "E_NUMERIC");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, g2}, {g1, T(4, 3, INFINITY)}, o), "E_NUMERIC");
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, g2}, {g1, g2}, MvebLossOptions{0.01, 0.01f, 0.1f, 3}), "E_ARG");
  Tensor i32 = empty_tensor(be, {4, 3}, DType::Int32);
  EXPECT_THROWS_CODE(mveb_loss_forward({g1, i32}, {g1, g2}, o), "E_DTYPE");
  std::vector<float> s(12);
  EXPECT_THROWS_CODE(cpu().vmf_score(s.data(), good.data(), 1, 3, 0.01f, 0.1f), "E_SHAPE");
  std::vector<float> bad = good;
  bad[5] = NAN;
  EXPECT_THROWS_CODE(cpu().vmf_score(s.data(), bad.data(), 4, 3, 0.01f, 0.1f), "E_NUMERIC");
  EXPECT_THROWS_CODE(cpu().vmf_score(s.data(), good.data(), 4, 3, -1.f, 0.1f), "E_ARG");
  EXPECT_THROWS_CODE(cpu().vmf_score(s.data(), good.data(), 4, 3, 0.01f, 0.f), "E_ARG");
  // a width so small that exp(1/width) overflows even in float64
  std::vector<float> same = {0.6f, 0.8f, 0, 0.6f, 0.8f, 0, 0.6f, 0.8f, 0, 0.6f, 0.8f, 0};
  EXPECT_THROWS_CODE(cpu().vmf_score(s.data(), same.data(), 4, 3, 0.01f, 1e-4f), "E_NUMERIC");
  EXPECT_THROWS_CODE(vmf_score_tensor(T(1, 3), 0.01f, 0.1f), "E_SHAPE");
}
