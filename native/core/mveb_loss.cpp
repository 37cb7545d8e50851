// mveb_loss.cpp: see mveb_loss.h. The batch means of row dot products read host memory directly on
// the CPU backend and are small gemms elsewhere; the rest is normalise / vmf_score / fill / axpy.
// Tested by test/native/test_vmf.cpp ("loss: mveb ...").
#include "core/mveb_loss.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace mveb {

namespace {

// mean_i a_i . b_i for a, b [N, D] on `be`. CPU memory is host memory: a plain dot in double (one
// read of each operand). Elsewhere: a 1 x 1 gemm over the flat length-n rows would make the gemm pack
// n x NR panels, so view both as [8, n / 8] and take the trace of the 8 x 8 product (16 n FLOP), plus
// a 1 x 1 gemm for the < 8 leftover values. out: 65 floats of scratch on `be`.
double mean_row_dot(Backend& be, const float* a, const float* b, int N, int D, float* out) {
  const int64_t n = static_cast<int64_t>(N) * D;
  if (be.device() == Device::CPU) {
    double s = 0;
    for (int64_t i0 = 0; i0 < n; i0 += 256) {  // float partial sums over 256 values, then double
      float block[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t i1 = std::min(n, i0 + 256);
      int64_t i = i0;
      for (; i + 8 <= i1; i += 8)
        for (int l = 0; l < 8; ++l) block[l] += a[i + l] * b[i + l];
      for (; i < i1; ++i) s += static_cast<double>(a[i]) * b[i];
      for (float v : block) s += v;
    }
    return s / N;
  }
  constexpr int R = 8;
  const int c = static_cast<int>(n / R), rem = static_cast<int>(n - static_cast<int64_t>(R) * c);
  float host[R * R + 1] = {};
  if (c > 0) be.gemm(false, true, R, R, c, 1.f, a, c, b, c, 0.f, out, R);
  if (rem > 0) be.gemm(false, true, 1, 1, rem, 1.f, a + R * c, rem, b + R * c, rem, 0.f, out + R * R, 1);
  be.download(host, out, sizeof(host));
  double s = rem > 0 ? host[R * R] : 0.0;
  if (c > 0)
    for (int i = 0; i < R; ++i) s += host[i * R + i];
  return s / N;
}

void check_input(const Tensor& t, const Tensor& first, const std::string& what) {
  check_float(t, what.c_str());
  check_same_device(t, first, what.c_str());
  check_shape(t, first.shape, what.c_str());
  MVEB_CHECK(t.backend().all_finite(t.f32(), static_cast<size_t>(t.numel())), "E_NUMERIC", what,
             ": contains non-finite values (NaN or Inf); expected finite projector outputs");
}

}  // namespace

VmfScoreResult vmf_score_tensor(const Tensor& z, float eta, float min_width) {
  MVEB_CHECK(z.defined(), "E_ARG", "vmfScore: z is missing");
  check_float(z, "vmfScore: z");
  MVEB_CHECK(z.shape.size() == 2, "E_SHAPE", "vmfScore: z must be [N, D], found ", shape_string(z.shape));
  MVEB_CHECK(z.dim(0) >= 2, "E_SHAPE", "vmfScore: needs at least 2 samples, found z ", shape_string(z.shape));
  MVEB_CHECK(z.dim(1) >= 1, "E_SHAPE", "vmfScore: needs D >= 1, found z ", shape_string(z.shape));
  MVEB_CHECK(z.dim(0) * z.dim(1) < (int64_t(1) << 31), "E_SHAPE", "vmfScore: z ", shape_string(z.shape),
             " is too large (N * D must stay below 2^31)");
  Backend& be = z.backend();
  VmfScoreResult r;
  r.score = empty_tensor(be, z.shape);
  r.info = be.vmf_score(r.score.f32(), z.f32(), static_cast<int>(z.dim(0)), static_cast<int>(z.dim(1)), eta,
                        min_width);
  return r;
}

MvebLossResult mveb_loss_forward(const std::vector<Tensor>& online, const std::vector<Tensor>& targets,
                                 const MvebLossOptions& o) {
  const int V = static_cast<int>(online.size());
  MVEB_CHECK(V >= 2, "E_ARG", "MVEBLoss: needs at least 2 online views, found ", V);
  MVEB_CHECK(targets.size() == 2, "E_ARG", "MVEBLoss: needs exactly 2 target views, found ", targets.size());
  const Tensor& first = online[0];
  MVEB_CHECK(first.defined(), "E_ARG", "MVEBLoss: online[0] is missing");
  check_float(first, "MVEBLoss: online[0]");
  MVEB_CHECK(first.shape.size() == 2, "E_SHAPE", "MVEBLoss: online[0] must be [N, D], found ",
             shape_string(first.shape));
  const int64_t N64 = first.dim(0), D64 = first.dim(1);
  MVEB_CHECK(N64 >= 2, "E_SHAPE", "MVEBLoss: needs at least 2 samples, found online[0] ", shape_string(first.shape));
  MVEB_CHECK(D64 >= 1, "E_SHAPE", "MVEBLoss: needs D >= 1, found online[0] ", shape_string(first.shape));
  MVEB_CHECK(N64 * D64 < (int64_t(1) << 31), "E_SHAPE", "MVEBLoss: [N, D] = ", shape_string(first.shape),
             " is too large (N * D must stay below 2^31)");
  for (int v = 0; v < V; ++v) check_input(online[v], first, "MVEBLoss: online[" + std::to_string(v) + "]");
  for (int a = 0; a < 2; ++a) check_input(targets[a], first, "MVEBLoss: targets[" + std::to_string(a) + "]");
  const int N = static_cast<int>(N64), D = static_cast<int>(D64);
  const int gs = o.group_size <= 0 ? N : o.group_size;
  MVEB_CHECK(gs >= 2 && N % gs == 0, "E_ARG", "MVEBLoss: groupSize must be >= 2 and divide the batch size ", N,
             ", found ", o.group_size);
  MVEB_CHECK(std::isfinite(o.lambda), "E_ARG", "MVEBLoss: lambda must be finite, found ", o.lambda);
  MVEB_CHECK(std::isfinite(o.eps) && o.eps > 0, "E_ARG", "MVEBLoss: eps must be finite and > 0, found ", o.eps);

  Backend& be = first.backend();
  const size_t n = static_cast<size_t>(N) * D;
  MvebLossResult r;
  r.groups = N / gs;
  r.surrogates.resize(V);
  r.estimates.resize(static_cast<size_t>(V) * r.groups);

  Tensor scalar = empty_tensor(be, {65});
  Tensor t[2], tnorm = empty_tensor(be, {N});
  for (int a = 0; a < 2; ++a) {
    t[a] = empty_tensor(be, {N, D});
    be.l2_normalize_rows_forward(t[a].f32(), tnorm.f32(), targets[a].f32(), N, D, o.eps);
  }
  Tensor z = empty_tensor(be, {N, D}), norms = empty_tensor(be, {N}), score = empty_tensor(be, {N, D}),
         gz = empty_tensor(be, {N, D});
  const float inv_vn = static_cast<float>(1.0 / (static_cast<double>(V) * N));
  double alignment = 0, entropy = 0;
  for (int v = 0; v < V; ++v) {
    be.l2_normalize_rows_forward(z.f32(), norms.f32(), online[v].f32(), N, D, o.eps);
    for (int g = 0; g < r.groups; ++g) {
      const size_t off = static_cast<size_t>(g) * gs * D;
      r.estimates[static_cast<size_t>(v) * r.groups + g] =
          be.vmf_score(score.f32() + off, z.f32() + off, gs, D, o.eta, o.min_width);
    }
    // alignment term and its gradient
    be.fill(gz.f32(), 0.f, n);
    if (v < 2) {
      const Tensor& target = t[1 - v];
      alignment += mean_row_dot(be, z.f32(), target.f32(), N, D, scalar.f32());
      be.axpy(gz.f32(), -inv_vn, target.f32(), n);
    } else {
      alignment += 0.5 * (mean_row_dot(be, z.f32(), t[0].f32(), N, D, scalar.f32()) +
                          mean_row_dot(be, z.f32(), t[1].f32(), N, D, scalar.f32()));
      be.axpy(gz.f32(), -0.5f * inv_vn, t[0].f32(), n);
      be.axpy(gz.f32(), -0.5f * inv_vn, t[1].f32(), n);
    }
    // entropy surrogate H_v = -mean_i s_i . z_i (score detached) and its gradient -s / N
    r.surrogates[v] = -mean_row_dot(be, score.f32(), z.f32(), N, D, scalar.f32());
    entropy += r.surrogates[v];
    be.axpy(gz.f32(), static_cast<float>(o.lambda) * inv_vn, score.f32(), n);
    Tensor grad = empty_tensor(be, {N, D});
    be.l2_normalize_rows_backward(grad.f32(), gz.f32(), z.f32(), norms.f32(), N, D, o.eps);
    r.grads.push_back(grad);
  }
  r.alignment = alignment / V;
  r.entropy = entropy / V;
  r.loss = -r.alignment - o.lambda * r.entropy;
  return r;
}

}  // namespace mveb
