// model.h: the model graphs of mveb: a torchvision-style ResNet-18/34/50 backbone and the MVEB
// projector (Linear -> BN1d -> ReLU -> Linear -> BN1d -> ReLU -> Linear+bias), on any Backend.
// Test: test/native/test_model.cpp (PyTorch golden fixtures in test/fixtures/, finite differences,
// optimiser/EMA formulas, state dict round trips):  mveb_native_tests "model:"
//
// Memory is FLAT ARENAS, one allocation each: parameters, gradients, optimiser momentum (created on
// the first step), buffers (BN running mean/var) and activations (sized for the last input shape,
// re-planned when it changes). A table of named entries gives each tensor's offset; names and
// shapes are torchvision's (conv1.weight OIHW, layer1.0.bn1.running_mean, ...), the storage of conv
// weights inside the arena is KRSC (what the NHWC kernels want). zeroGrad is one fill, the
// optimiser one pass, EMA one pass.
//
// forward(x NCHW, train) converts to NHWC and saves every activation backward needs (conv inputs,
// BN inputs and outputs, pool argmax, BN batch statistics). An eval-mode ResNet forward is pure
// inference: its activations rotate through 5 buffers (no backward after it), so large-batch
// feature extraction stays small. backward(gradOut) returns the input
// gradient (NCHW) and ACCUMULATES parameter gradients. Gradient scratch: four buffers the size of
// the largest activation, rotated block by block (see resnet_backward in model.cpp).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace mveb {

struct ResnetConfig {
  int depth = 50;               // 18 | 34 | 50
  bool cifar_stem = false;      // false: 7x7/2 conv + BN + ReLU + 3x3/2 max pool; true: 3x3/1 conv + BN + ReLU
  int in_channels = 3;
  double width_multiplier = 1;  // stage widths round(64 w) * {1, 2, 4, 8}
  bool zero_init_residual = false;
  uint64_t seed = 0;
  bool initialize = true;       // false: skip the random init (clone, shape-only uses)
};

struct ProjectorConfig {
  int in_dim = 2048, hidden_dim = 2048, out_dim = 2048;
  uint64_t seed = 0;
  bool initialize = true;
};

struct OptimizerOptions {
  bool lars = false;  // false: SGD (PyTorch semantics, weight decay on every tensor)
  float lr = 0.1f, momentum = 0.9f, weight_decay = 0, trust = 0.001f;
};

// One named tensor of an arena. shape is the PyTorch shape; krsc: stored KRSC, shape is OIHW.
struct ArenaEntry {
  std::string name;
  Shape shape;
  size_t offset = 0;  // in floats
  size_t numel = 0;
  bool krsc = false;
  bool matrix = false;  // ndim > 1: LARS weight decay and trust adaptation apply
};

struct Planner;

class Model {
 public:
  static std::unique_ptr<Model> resnet(Backend& backend, const ResnetConfig& config);
  static std::unique_ptr<Model> projector(Backend& backend, const ProjectorConfig& config);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  bool is_resnet() const { return is_resnet_; }
  int feature_dim() const { return feature_dim_; }
  int in_channels() const { return in_channels_; }
  Backend& backend() const { return *backend_; }
  size_t parameter_count() const { return param_count_; }

  // x: [N, C, H, W] (resnet) or [N, inDim] (projector), float32 on this backend. Returns [N, featureDim].
  // train: BN uses (and updates) batch statistics. save_for_backward (ResNet; ignored when !train,
  // where nothing is saved): false runs a train-mode forward in the small inference layout, for a
  // network that is never backpropagated (the EMA target).
  Tensor forward(const Tensor& x, bool train, bool save_for_backward = true);
  // gradOut: [N, featureDim]. Returns the input gradient (undefined when input_grad is false);
  // accumulates parameter gradients. Needs a preceding forward.
  Tensor backward(const Tensor& grad_out, bool input_grad = true);
  void zero_grad();

  // Copies in PyTorch layout (OIHW for convs). num_batches_tracked appears in buffers() as int32 [].
  std::vector<std::pair<std::string, Tensor>> parameters() const;
  std::vector<std::pair<std::string, Tensor>> gradients() const;
  std::vector<std::pair<std::string, Tensor>> buffers() const;
  std::vector<std::pair<std::string, Tensor>> state_dict() const;  // parameters then buffers
  // Loads named tensors (float32, or int32 for num_batches_tracked). strict: every entry must be
  // present and no unknown name may appear (E_FORMAT naming them); shape mismatch is E_SHAPE.
  // For a backbone, `fc.*` names (the classifier of a torchvision checkpoint) are ignored.
  void load_state_dict(const std::vector<std::pair<std::string, Tensor>>& tensors, bool strict);
  const std::vector<ArenaEntry>& parameter_entries() const { return params_; }
  const std::vector<ArenaEntry>& buffer_entries() const { return buffers_; }

  std::unique_ptr<Model> clone() const;  // deep copy of parameters and buffers; zero gradients, no momentum
  // Copies src's parameters and/or buffers (running stats and counters) into this model: one arena
  // copy each, no layout transforms (a cheap snapshot/rollback; E_SHAPE unless same architecture).
  void copy_from(const Model& src, bool parameters, bool buffers);
  // this = m * this + (1 - m) * online, parameters only.
  void ema_update(const Model& online, float m);
  // this model's gradients += src's (E_SHAPE unless same architecture): the gradients of a pass run
  // on a copy of this model (a second set of activations) added to this model's.
  void add_gradients(const Model& src);
  // Batch-norm running statistics of views run side by side as one after the other would leave
  // them: this model and earlier[0..V-2] (copies of it) each ran one training forward, this one the
  // last view, all from before's buffers (a snapshot); afterwards this holds the statistics of views
  // 0..V-1 run in order on one model (up to rounding): with q = 1 - momentum, each run's update is
  // r_v = q r_before + momentum s_v, so r = r_this + sum_v q^(V-1-v) (r_v - r_before); the counters
  // add up the same way. E_SHAPE / E_DEVICE unless all have this architecture on this backend.
  void merge_running_stats(const Model& before, const std::vector<const Model*>& earlier);
  // Skips the update and returns false when any gradient is non-finite.
  bool optimizer_step(const OptimizerOptions& options);
  std::vector<std::pair<std::string, Tensor>> optimizer_state() const;  // momentum per parameter (empty before a step)
  void load_optimizer_state(const std::vector<std::pair<std::string, Tensor>>& state);

  // Raw arenas (tests, checkpoints): floats on this backend.
  float* param_arena() const { return param_arena_.f32(); }
  float* grad_arena() const { return grad_arena_.f32(); }
  float* buffer_arena() const { return buffer_arena_.f32(); }
  size_t activation_bytes() const { return act_arena_.defined() ? act_arena_.bytes() : 0; }
  // The activation memory a training forward of this input shape would plan (saved for backward),
  // without planning or allocating it (E_SHAPE as forward for a bad shape).
  size_t activation_bytes_for(const Shape& input_shape) const;

  struct Impl;  // layer tables (model.cpp)

 private:
  Model(Backend& backend);
  void allocate_arenas();
  void check_same_architecture(const Model& src, const char* what) const;
  void upload_initial_state(const std::vector<float>& host_params);
  void plan(const Shape& input_shape, bool inference);
  void plan_into(const Shape& input_shape, Planner& p, Impl& layers) const;
  void check_input_shape(const Shape& input_shape) const;  // E_SHAPE unless a valid forward input
  static constexpr int kGradScratch = 4;  // gradient scratch tensors in a training plan
  Tensor to_pytorch_layout(const ArenaEntry& e, const float* arena) const;
  void from_pytorch_layout(const ArenaEntry& e, float* arena, const Tensor& t) const;

  Backend* backend_;
  bool is_resnet_ = true;
  int feature_dim_ = 0, in_channels_ = 0;
  std::vector<ArenaEntry> params_, buffers_;
  size_t param_count_ = 0, buffer_count_ = 0;
  Tensor param_arena_, grad_arena_, momentum_arena_, buffer_arena_, act_arena_;
  std::vector<int64_t> num_batches_tracked_;  // one per BN layer, host side
  std::unique_ptr<Impl> impl_;
  Shape planned_shape_;
  bool planned_inference_ = false;
  bool forward_done_ = false, forward_train_ = false;
};

}  // namespace mveb
