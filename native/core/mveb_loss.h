// mveb_loss.h: the MVEB loss (mveb-spec.md section 1.3) and the vMF score estimator on tensors,
// backend-agnostic (every computation goes through the Backend op table, so CPU and CUDA share it).
// Vocabulary: V online views, each [N, D] raw projector outputs (views 0 and 1 global, the rest local
// crops); 2 raw target outputs [N, D]. With z_v = normalize(online_v), t_a = normalize(target_a):
//   A = <z_0, t_1> + <z_1, t_0> + sum_{v >= 2} <z_v, (t_0 + t_1) / 2>       <a, b> = mean_i a_i . b_i
//   H_v = -mean_i(sg(s_v,i) . z_v,i),  s_v = vmf score of z_v (per group of group_size rows)
//   loss = -A / V - lambda * sum_v H_v / V
// Gradients: dloss/dz_v = -(target of v) / (V N) + lambda s_v / (V N), then through the normalisation
// (exact, l2_normalize_rows_backward). Targets get none. Checked by test/native/test_vmf.cpp against a
// float64 reference and finite differences ("loss: mveb ...").
#pragma once
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace mveb {

struct MvebLossOptions {
  double lambda = 0.01;
  float eta = 0.01f;
  float min_width = 0.1f;
  int group_size = 0;   // rows per estimator call; 0 = the whole batch. Must divide N and be >= 2.
  float eps = 1e-12f;   // normalisation eps (F.normalize)
};

struct MvebLossResult {
  double loss = 0;
  double alignment = 0;             // A / V
  double entropy = 0;               // sum_v H_v / V (the surrogate: only its gradient is meaningful)
  std::vector<double> surrogates;   // H_v per view
  int groups = 1;                   // estimator calls per view
  std::vector<VmfInfo> estimates;   // per view and group, index v * groups + g
  std::vector<Tensor> grads;        // dloss / d online[v], [N, D], same backend as the inputs
};

// Throws E_ARG / E_SHAPE / E_DTYPE / E_DEVICE on bad arguments, E_NUMERIC on non-finite inputs.
MvebLossResult mveb_loss_forward(const std::vector<Tensor>& online, const std::vector<Tensor>& targets,
                                 const MvebLossOptions& options);

struct VmfScoreResult {
  Tensor score;  // [N, D]
  VmfInfo info;
};
// The estimator on z [N, D] (unit rows expected, not enforced, as in the official code).
VmfScoreResult vmf_score_tensor(const Tensor& z, float eta, float min_width);

}  // namespace mveb
