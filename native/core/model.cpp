// model.cpp: ResNet-18/34/50 (torchvision semantics) and the MVEB projector over flat arenas. See
// model.h for the memory layout and contract. Test: mveb_native_tests "model:".
#include "core/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/random.h"

namespace mveb {

namespace {
constexpr size_t NONE = std::numeric_limits<size_t>::max();
constexpr float BN_MOMENTUM = 0.1f, BN_EPS = 1e-5f;

struct ConvLayer {
  int C = 0, K = 0, R = 0, stride = 1, pad = 0;
  size_t w = 0;      // parameter offset (KRSC)
  ConvShape s{};     // planned for the current input
  size_t in = 0, out = 0;  // activation offsets
};

struct BnLayer {
  int C = 0;
  size_t gamma = 0, beta = 0;   // parameter offsets
  size_t rmean = 0, rvar = 0;   // buffer offsets
  int index = 0;                // num_batches_tracked slot
  bool relu = false;
  int M = 0;
  size_t in = 0, out = 0, res = NONE, mean = 0, invstd = 0;  // activation offsets
  size_t mask = NONE;  // the ReLU mask (bytes in float slots; relu and a training plan only)
  size_t stats = NONE;  // batch statistics from the conv before it: 2 C doubles
};

struct LinearLayer {
  int in_dim = 0, out_dim = 0;
  size_t w = 0, b = NONE;  // [out, in] row-major, bias [out]
  size_t in = 0, out = 0;
};

struct Block {
  std::vector<ConvLayer> convs;  // 2 (basic) or 3 (bottleneck)
  std::vector<BnLayer> bns;
  bool down = false;
  ConvLayer dconv;
  BnLayer dbn;
  size_t in = 0, out = 0;
  int H = 0, W = 0, C = 0;  // input spatial size and channels (planned)
};

}  // namespace

// Activation offsets. Training: a bump allocator (every activation kept for backward). Inference
// (eval forward): outputs rotate through 5 slots of the largest activation's size, never one that
// is still live (a block's input, its residual, the op's own input), so batch 512 feature
// extraction needs a few activations' worth of memory instead of the whole network's.
struct Planner {
  size_t top = 0, max_tensor = 0;
  bool inference = false;
  size_t slot_size = 0;
  static constexpr int kSlots = 5;
  size_t alloc(size_t n) {
    size_t off = top;
    top += (n + 15) / 16 * 16;
    return off;
  }
  size_t tensor(size_t n, std::initializer_list<size_t> live = {}) {
    max_tensor = std::max(max_tensor, n);
    if (!inference) return alloc(n);
    for (int i = 0; i < kSlots; ++i) {
      const size_t off = static_cast<size_t>(i) * slot_size;
      if (std::find(live.begin(), live.end(), off) == live.end()) return off;
    }
    throw_error("E_INTERNAL", "activation planner ran out of slots");
  }
};

struct Model::Impl {
  ResnetConfig rcfg;
  ProjectorConfig pcfg;
  // resnet
  ConvLayer stem_conv;
  BnLayer stem_bn;
  bool pool = false;
  PoolShape pool_shape{};
  size_t pool_out = 0, pool_argmax = 0;
  std::vector<Block> blocks;
  size_t input = 0, feat = 0;
  int head_HW = 0, head_C = 0;
  int N = 0, H = 0, W = 0;
  // projector
  LinearLayer lin[3];
  BnLayer pbn[2];
  // gradient scratch
  size_t scratch[kGradScratch] = {0, 0, 0, 0};
  size_t scratch_size = 0;
};

Model::Model(Backend& backend) : backend_(&backend), impl_(std::make_unique<Impl>()) {}
Model::~Model() = default;

// ---------------------------------------------------------------------------------------------
// construction

namespace {
struct Builder {
  std::vector<ArenaEntry>* params;
  std::vector<ArenaEntry>* buffers;
  size_t ptop = 0, btop = 0;
  int bn_count = 0;
  size_t add(std::vector<ArenaEntry>& list, size_t& top, const std::string& name, const Shape& shape, bool krsc) {
    ArenaEntry e;
    e.name = name;
    e.shape = shape;
    e.offset = top;
    e.numel = static_cast<size_t>(shape_numel(shape));
    e.krsc = krsc;
    e.matrix = shape.size() > 1;
    top += e.numel;
    list.push_back(e);
    return e.offset;
  }
  ConvLayer conv(const std::string& name, int C, int K, int R, int stride, int pad) {
    ConvLayer c;
    c.C = C, c.K = K, c.R = R, c.stride = stride, c.pad = pad;
    c.w = add(*params, ptop, name + ".weight", {K, C, R, R}, true);
    return c;
  }
  BnLayer bn(const std::string& name, int C, bool relu) {
    BnLayer b;
    b.C = C;
    b.relu = relu;
    b.gamma = add(*params, ptop, name + ".weight", {C}, false);
    b.beta = add(*params, ptop, name + ".bias", {C}, false);
    b.rmean = add(*buffers, btop, name + ".running_mean", {C}, false);
    b.rvar = add(*buffers, btop, name + ".running_var", {C}, false);
    b.index = bn_count++;
    return b;
  }
};

// Names of the num_batches_tracked counters, in BN order, from the running_mean entries.
std::string bn_prefix(const std::string& running_mean_name) {
  return running_mean_name.substr(0, running_mean_name.size() - std::string(".running_mean").size());
}
}  // namespace

void Model::allocate_arenas() {
  for (auto& e : params_) param_count_ = std::max(param_count_, e.offset + e.numel);
  for (auto& e : buffers_) buffer_count_ = std::max(buffer_count_, e.offset + e.numel);
  param_arena_ = empty_tensor(*backend_, {static_cast<int64_t>(param_count_)});
  grad_arena_ = empty_tensor(*backend_, {static_cast<int64_t>(param_count_)});
  buffer_arena_ = empty_tensor(*backend_, {static_cast<int64_t>(buffer_count_)});
  backend_->fill(grad_arena_.f32(), 0.f, param_count_);
}

// Parameters from `host_params`; BN buffers as PyTorch initialises them (running_var 1, the rest 0).
void Model::upload_initial_state(const std::vector<float>& host_params) {
  backend_->upload(param_arena_.f32(), host_params.data(), host_params.size() * sizeof(float));
  std::vector<float> buf(buffer_count_, 0.f);
  for (const ArenaEntry& e : buffers_)
    if (e.name.size() > 12 && e.name.compare(e.name.size() - 12, 12, ".running_var") == 0)
      std::fill(buf.begin() + e.offset, buf.begin() + e.offset + e.numel, 1.f);
  backend_->upload(buffer_arena_.f32(), buf.data(), buf.size() * sizeof(float));
}

std::unique_ptr<Model> Model::resnet(Backend& backend, const ResnetConfig& cfg) {
  MVEB_CHECK(cfg.depth == 18 || cfg.depth == 34 || cfg.depth == 50, "E_ARG", "resnet depth: expected 18, 34 or 50, found ",
             cfg.depth);
  MVEB_CHECK(cfg.in_channels >= 1 && cfg.in_channels <= 4096, "E_ARG", "resnet inChannels: expected 1..4096, found ",
             cfg.in_channels);
  const double base = std::round(64.0 * cfg.width_multiplier);
  MVEB_CHECK(cfg.width_multiplier > 0 && base >= 1 && base <= 64 * 16, "E_ARG",
             "resnet widthMultiplier: expected 64 * w to round to 1..1024, found w = ", cfg.width_multiplier);
  std::unique_ptr<Model> m(new Model(backend));
  m->is_resnet_ = true;
  m->in_channels_ = cfg.in_channels;
  Impl& I = *m->impl_;
  I.rcfg = cfg;
  Builder b{&m->params_, &m->buffers_};
  const int w0 = static_cast<int>(base);
  const bool bottleneck = cfg.depth == 50;
  const int expansion = bottleneck ? 4 : 1;
  const int counts18[4] = {2, 2, 2, 2}, counts34[4] = {3, 4, 6, 3};
  const int* counts = cfg.depth == 18 ? counts18 : counts34;

  if (cfg.cifar_stem) I.stem_conv = b.conv("conv1", cfg.in_channels, w0, 3, 1, 1);
  else I.stem_conv = b.conv("conv1", cfg.in_channels, w0, 7, 2, 3);
  I.stem_bn = b.bn("bn1", w0, true);
  I.pool = !cfg.cifar_stem;
  int inplanes = w0;
  for (int stage = 0; stage < 4; ++stage) {
    const int planes = w0 << stage;
    for (int i = 0; i < counts[stage]; ++i) {
      const int stride = (stage > 0 && i == 0) ? 2 : 1;
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(i) + ".";
      Block blk;
      if (bottleneck) {
        blk.convs.push_back(b.conv(p + "conv1", inplanes, planes, 1, 1, 0));
        blk.bns.push_back(b.bn(p + "bn1", planes, true));
        blk.convs.push_back(b.conv(p + "conv2", planes, planes, 3, stride, 1));
        blk.bns.push_back(b.bn(p + "bn2", planes, true));
        blk.convs.push_back(b.conv(p + "conv3", planes, planes * expansion, 1, 1, 0));
        blk.bns.push_back(b.bn(p + "bn3", planes * expansion, true));
      } else {
        blk.convs.push_back(b.conv(p + "conv1", inplanes, planes, 3, stride, 1));
        blk.bns.push_back(b.bn(p + "bn1", planes, true));
        blk.convs.push_back(b.conv(p + "conv2", planes, planes, 3, 1, 1));
        blk.bns.push_back(b.bn(p + "bn2", planes, true));
      }
      if (stride != 1 || inplanes != planes * expansion) {
        blk.down = true;
        blk.dconv = b.conv(p + "downsample.0", inplanes, planes * expansion, 1, stride, 0);
        blk.dbn = b.bn(p + "downsample.1", planes * expansion, false);
      }
      inplanes = planes * expansion;
      I.blocks.push_back(std::move(blk));
    }
  }
  m->feature_dim_ = inplanes;
  m->num_batches_tracked_.assign(b.bn_count, 0);
  m->allocate_arenas();
  if (!cfg.initialize) return m;

  // torchvision init: convs kaiming_normal_(fan_out, relu) -> std = sqrt(2 / (K R S)); BN weight 1
  // bias 0; last BN of each block weight 0 when zero_init_residual. Value i of the tensor at arena
  // offset o (OIHW order) is normal01(seed, o + i): independent of threads and backends.
  std::vector<float> host(m->param_count_, 0.f);
  for (const ArenaEntry& e : m->params_) {
    if (e.krsc) {
      const int K = e.shape[0], C = e.shape[1], R = e.shape[2], S = e.shape[3];
      const double std_dev = std::sqrt(2.0 / (static_cast<double>(K) * R * S));
      for (int k = 0; k < K; ++k)
        for (int c = 0; c < C; ++c)
          for (int r = 0; r < R; ++r)
            for (int s = 0; s < S; ++s) {
              const size_t oihw = ((static_cast<size_t>(k) * C + c) * R + r) * S + s;
              const size_t krsc = ((static_cast<size_t>(k) * R + r) * S + s) * C + c;
              host[e.offset + krsc] = static_cast<float>(std_dev * normal01(cfg.seed, e.offset + oihw));
            }
    } else if (e.name.size() > 7 && e.name.compare(e.name.size() - 7, 7, ".weight") == 0) {
      std::fill(host.begin() + e.offset, host.begin() + e.offset + e.numel, 1.f);
    }
  }
  if (cfg.zero_init_residual) {
    for (const Block& blk : I.blocks) {
      const BnLayer& last = blk.bns.back();
      std::fill(host.begin() + last.gamma, host.begin() + last.gamma + last.C, 0.f);
    }
  }
  m->upload_initial_state(host);
  return m;
}

std::unique_ptr<Model> Model::projector(Backend& backend, const ProjectorConfig& cfg) {
  MVEB_CHECK(cfg.in_dim >= 1 && cfg.hidden_dim >= 1 && cfg.out_dim >= 1, "E_ARG",
             "projector dims must be >= 1, found inDim ", cfg.in_dim, ", hiddenDim ", cfg.hidden_dim, ", outDim ",
             cfg.out_dim);
  std::unique_ptr<Model> m(new Model(backend));
  m->is_resnet_ = false;
  m->in_channels_ = cfg.in_dim;
  m->feature_dim_ = cfg.out_dim;
  Impl& I = *m->impl_;
  I.pcfg = cfg;
  Builder b{&m->params_, &m->buffers_};
  // nn.Sequential indices of the official projector: 0 Linear, 1 BN, 2 ReLU, 3 Linear, 4 BN, 5 ReLU, 6 Linear.
  const int dims[4] = {cfg.in_dim, cfg.hidden_dim, cfg.hidden_dim, cfg.out_dim};
  const char* lin_names[3] = {"0", "3", "6"};
  const char* bn_names[2] = {"1", "4"};
  for (int i = 0; i < 3; ++i) {
    LinearLayer& L = I.lin[i];
    L.in_dim = dims[i];
    L.out_dim = dims[i + 1];
    L.w = b.add(m->params_, b.ptop, std::string(lin_names[i]) + ".weight", {L.out_dim, L.in_dim}, false);
    if (i < 2) I.pbn[i] = b.bn(bn_names[i], L.out_dim, true);
    else L.b = b.add(m->params_, b.ptop, std::string(lin_names[i]) + ".bias", {L.out_dim}, false);
  }
  m->num_batches_tracked_.assign(b.bn_count, 0);
  m->allocate_arenas();
  if (!cfg.initialize) return m;
  // PyTorch Linear default: kaiming_uniform_(a = sqrt 5) -> U(-1/sqrt(in), 1/sqrt(in)); bias the same bound.
  std::vector<float> host(m->param_count_, 0.f);
  for (const ArenaEntry& e : m->params_) {
    const bool linear_w = e.shape.size() == 2;
    const bool linear_b = e.name == "6.bias";
    if (linear_w || linear_b) {
      const double fan_in = linear_w ? e.shape[1] : cfg.hidden_dim;
      const double bound = 1.0 / std::sqrt(fan_in);
      for (size_t i = 0; i < e.numel; ++i)
        host[e.offset + i] = static_cast<float>(bound * (2.0 * uniform01(cfg.seed, e.offset + i) - 1.0));
    } else if (e.name.size() > 7 && e.name.compare(e.name.size() - 7, 7, ".weight") == 0) {
      std::fill(host.begin() + e.offset, host.begin() + e.offset + e.numel, 1.f);
    }
  }
  m->upload_initial_state(host);
  return m;
}

// ---------------------------------------------------------------------------------------------
// planning: activation offsets for one input shape

void Model::plan(const Shape& shape, bool inference) {
  inference = inference && is_resnet_;  // the projector's activations are small: one plan for both
  if (shape == planned_shape_ && inference == planned_inference_ && act_arena_.defined()) return;
  Planner sizing;  // a training-layout pass gives the largest activation (the slot size)
  plan_into(shape, sizing, *impl_);
  Planner p;
  if (inference) {
    p.inference = true;
    p.slot_size = (sizing.max_tensor + 15) / 16 * 16;
    p.top = Planner::kSlots * p.slot_size;
    plan_into(shape, p, *impl_);
  } else {
    p = sizing;
    impl_->scratch_size = p.max_tensor;
    for (int i = 0; i < kGradScratch; ++i) impl_->scratch[i] = p.alloc(p.max_tensor);
  }
  act_arena_ = Tensor();  // free the old one first (peak memory)
  act_arena_ = empty_tensor(*backend_, {static_cast<int64_t>(p.top)});
  planned_shape_ = shape;
  planned_inference_ = inference;
  forward_done_ = false;
}

size_t Model::activation_bytes_for(const Shape& shape) const {
  check_input_shape(shape);
  Impl layers = *impl_;  // planning writes the layer tables: plan a copy, the live plan stays
  Planner p;
  plan_into(shape, p, layers);
  for (int i = 0; i < kGradScratch; ++i) p.alloc(p.max_tensor);
  return p.top * sizeof(float);
}

void Model::plan_into(const Shape& shape, Planner& p, Impl& I) const {
  size_t live_a = NONE, live_b = NONE;  // a block's input and residual (inference slots)
  auto plan_conv = [&](ConvLayer& c, size_t in, int N, int H, int W) {
    c.in = in;
    c.s = ConvShape{N, H, W, c.C, c.K, c.R, c.R, c.stride, c.pad};
    MVEB_CHECK(c.s.P() >= 1 && c.s.Q() >= 1, "E_SHAPE", "input [", shape[0], ", ", shape[1], ", ", shape[2], ", ",
               shape[3], "] is too small for this network: a ", c.R, "x", c.R, "/", c.stride,
               " convolution would get a ", H, "x", W, " input");
    c.out = p.tensor(static_cast<size_t>(N) * c.s.P() * c.s.Q() * c.K, {in, live_a, live_b});
  };
  auto plan_bn = [&](BnLayer& b, size_t in, int M, size_t res) {
    b.in = in;
    b.M = M;
    b.res = res;
    b.out = p.tensor(static_cast<size_t>(M) * b.C, {in, live_a, live_b});
    b.mean = p.alloc(b.C);
    b.invstd = p.alloc(b.C);
    // The ReLU mask for the backward; an inference plan has no backward.
    b.mask = b.relu && !p.inference ? p.alloc((relu_mask_bytes(M, b.C) + 3) / 4) : NONE;
    b.stats = p.alloc(static_cast<size_t>(4) * b.C);  // (inference plans too: a train forward without saved
                                                       // activations then gives the same numbers)
  };
  if (is_resnet_) {
    const int N = static_cast<int>(shape[0]), H = static_cast<int>(shape[2]), W = static_cast<int>(shape[3]);
    I.N = N, I.H = H, I.W = W;
    I.input = p.tensor(static_cast<size_t>(N) * H * W * in_channels_);
    plan_conv(I.stem_conv, I.input, N, H, W);
    int h = I.stem_conv.s.P(), w = I.stem_conv.s.Q(), c = I.stem_conv.K;
    plan_bn(I.stem_bn, I.stem_conv.out, N * h * w, NONE);
    size_t cur = I.stem_bn.out;
    if (I.pool) {
      I.pool_shape = PoolShape{N, h, w, c, 3, 2, 1};
      MVEB_CHECK(I.pool_shape.P() >= 1 && I.pool_shape.Q() >= 1, "E_SHAPE", "input too small for the max pool");
      h = I.pool_shape.P(), w = I.pool_shape.Q();
      I.pool_out = p.tensor(static_cast<size_t>(N) * h * w * c, {cur});
      I.pool_argmax = p.alloc(static_cast<size_t>(N) * h * w * c);
      cur = I.pool_out;
    }
    for (Block& blk : I.blocks) {
      blk.in = cur;
      blk.H = h, blk.W = w, blk.C = c;
      size_t x = cur;
      int hh = h, ww = w;
      size_t residual = cur;
      live_a = cur;
      if (blk.down) {
        plan_conv(blk.dconv, cur, N, h, w);
        plan_bn(blk.dbn, blk.dconv.out, N * blk.dconv.s.P() * blk.dconv.s.Q(), NONE);
        residual = blk.dbn.out;
      }
      live_b = residual;
      for (size_t i = 0; i < blk.convs.size(); ++i) {
        plan_conv(blk.convs[i], x, N, hh, ww);
        hh = blk.convs[i].s.P(), ww = blk.convs[i].s.Q();
        const bool last = i + 1 == blk.convs.size();
        plan_bn(blk.bns[i], blk.convs[i].out, N * hh * ww, last ? residual : NONE);
        x = blk.bns[i].out;
      }
      blk.out = x;
      cur = x, h = hh, w = ww, c = blk.convs.back().K;
      live_a = live_b = NONE;
    }
    I.head_HW = h * w;
    I.head_C = c;
    I.feat = p.tensor(static_cast<size_t>(N) * c, {cur});
  } else {
    const int N = static_cast<int>(shape[0]);
    I.N = N;
    I.input = p.tensor(static_cast<size_t>(N) * I.lin[0].in_dim);
    size_t cur = I.input;
    for (int i = 0; i < 3; ++i) {
      I.lin[i].in = cur;
      I.lin[i].out = p.tensor(static_cast<size_t>(N) * I.lin[i].out_dim);
      cur = I.lin[i].out;
      if (i < 2) {
        plan_bn(I.pbn[i], cur, N, NONE);
        cur = I.pbn[i].out;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// forward

void Model::check_input_shape(const Shape& shape) const {
  if (is_resnet_) {
    MVEB_CHECK(shape.size() == 4 && shape[1] == in_channels_ && shape[0] >= 1, "E_SHAPE",
               "forward input: expected shape [N, ", in_channels_, ", H, W], found ", shape_string(shape));
  } else {
    MVEB_CHECK(shape.size() == 2 && shape[1] == in_channels_ && shape[0] >= 1, "E_SHAPE",
               "forward input: expected shape [N, ", in_channels_, "], found ", shape_string(shape));
  }
}

Tensor Model::forward(const Tensor& x, bool train, bool save_for_backward) {
  check_float(x, "forward input");
  MVEB_CHECK(x.storage->backend == backend_, "E_DEVICE", "forward input is on ", device_name(x.device()),
             ", the model on ", device_name(backend_->device()));
  check_input_shape(x.shape);
  plan(x.shape, !train || !save_for_backward);
  Impl& I = *impl_;
  Backend& be = *backend_;
  float* A = act_arena_.f32();
  float* P = param_arena_.f32();
  float* B = buffer_arena_.f32();
  const int N = static_cast<int>(x.shape[0]);

  // stats: the batch statistics of b's input when the conv that wrote it computed them, else null.
  auto bn_fwd = [&](BnLayer& b, const double* stats) {
    uint8_t* mask = b.mask == NONE ? nullptr : reinterpret_cast<uint8_t*>(A + b.mask);
    if (train) {
      MVEB_CHECK(b.M > 1, "E_SHAPE", "batch norm in train mode needs more than one value per channel, found ", b.M,
                 " (batch ", N, ")");
      be.batchnorm_forward_train(A + b.out, mask, A + b.mean, A + b.invstd, B + b.rmean, B + b.rvar, A + b.in,
                                 P + b.gamma, P + b.beta, b.res == NONE ? nullptr : A + b.res, b.relu, b.M, b.C,
                                 BN_MOMENTUM, BN_EPS, stats);
      num_batches_tracked_[b.index] += 1;
    } else {
      be.batchnorm_forward_eval(A + b.out, mask, A + b.in, P + b.gamma, P + b.beta, B + b.rmean, B + b.rvar,
                                b.res == NONE ? nullptr : A + b.res, b.relu, b.M, b.C, BN_EPS);
      if (is_resnet_) return;  // inference: no backward follows
      // a projector backward in eval mode uses the running statistics as mean/invstd
      std::vector<float> mean(b.C), var(b.C);
      be.download(mean.data(), B + b.rmean, b.C * sizeof(float));
      be.download(var.data(), B + b.rvar, b.C * sizeof(float));
      for (int c = 0; c < b.C; ++c) var[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var[c]) + BN_EPS));
      be.upload(A + b.mean, mean.data(), b.C * sizeof(float));
      be.upload(A + b.invstd, var.data(), b.C * sizeof(float));
    }
  };
  // A conv and the batch norm after it; in training the conv may also compute the norm's statistics.
  auto conv_bn_fwd = [&](ConvLayer& c, BnLayer& b) {
    double* stats = train ? reinterpret_cast<double*>(A + b.stats) : nullptr;
    if (!stats)
      be.conv2d_forward(A + c.out, A + c.in, P + c.w, c.s);
    else if (!be.conv2d_forward_stats(A + c.out, stats, A + c.in, P + c.w, c.s))
      stats = nullptr;  // no fused path for this shape: the norm takes its own
    bn_fwd(b, stats);
  };

  Tensor out = empty_tensor(be, {N, feature_dim_});
  if (is_resnet_) {
    be.nchw_to_nhwc(A + I.input, x.f32(), N, in_channels_, I.H, I.W);
    conv_bn_fwd(I.stem_conv, I.stem_bn);
    if (I.pool)
      be.maxpool2d_forward(A + I.pool_out, reinterpret_cast<int32_t*>(A + I.pool_argmax), A + I.stem_bn.out,
                           I.pool_shape);
    for (Block& blk : I.blocks) {
      if (blk.down) {
        conv_bn_fwd(blk.dconv, blk.dbn);
      }
      for (size_t i = 0; i < blk.convs.size(); ++i) {
        conv_bn_fwd(blk.convs[i], blk.bns[i]);
      }
    }
    be.global_avgpool_forward(out.f32(), A + I.blocks.back().out, N, I.head_HW, I.head_C);
  } else {
    be.copy(A + I.input, x.f32(), x.bytes());
    for (int i = 0; i < 3; ++i) {
      LinearLayer& L = I.lin[i];
      float* y = i == 2 ? out.f32() : A + L.out;
      be.gemm(false, true, N, L.out_dim, L.in_dim, 1.f, A + L.in, L.in_dim, P + L.w, L.in_dim, 0.f, y, L.out_dim);
      if (L.b != NONE) be.add_bias_rows(y, P + L.b, N, L.out_dim);
      if (i < 2) bn_fwd(I.pbn[i], nullptr);
    }
  }
  forward_done_ = true;
  forward_train_ = train;
  return out;
}

// ---------------------------------------------------------------------------------------------
// backward

Tensor Model::backward(const Tensor& grad_out, bool input_grad) {
  MVEB_CHECK(forward_done_, "E_ARG", "backward needs a preceding forward on this model");
  MVEB_CHECK(!planned_inference_, "E_ARG",
             "backward after a ResNet forward that kept no activations (train: false, or saveForBackward: "
             "false); run forward with { train: true } to train");
  check_float(grad_out, "backward gradOut");
  MVEB_CHECK(grad_out.storage->backend == backend_, "E_DEVICE", "backward gradOut is on ",
             device_name(grad_out.device()), ", the model on ", device_name(backend_->device()));
  Impl& I = *impl_;
  const int N = I.N;
  check_shape(grad_out, {N, feature_dim_}, "backward gradOut");
  Backend& be = *backend_;
  float* A = act_arena_.f32();
  float* P = param_arena_.f32();
  float* G = grad_arena_.f32();
  const bool train = forward_train_;
  float* S[4] = {A + I.scratch[0], A + I.scratch[1], A + I.scratch[2], A + I.scratch[3]};

  // dy -> dx (assigns), dresidual (assigns, may be null); accumulates dgamma/dbeta.
  auto bn_bwd = [&](const BnLayer& b, float* dx, float* dres, const float* dy) {
    const uint8_t* mask = b.mask == NONE ? nullptr : reinterpret_cast<const uint8_t*>(A + b.mask);
    be.batchnorm_backward(dx, dres, G + b.gamma, G + b.beta, dy, mask, A + b.in, P + b.gamma, A + b.mean,
                          A + b.invstd, b.relu, train, b.M, b.C);
  };
  // A batch norm and the conv before it (forward: conv -> BN): from the norm's output gradient dy,
  // the residual gradient dres (may be null) and the conv's input gradient dx (null: none; add: added
  // to; may be dy's buffer); dw, dgamma, dbeta accumulate. scratch: room for the norm's input gradient.
  auto bn_conv_bwd = [&](const BnLayer& b, const ConvLayer& c, const float* dy, float* dres, float* dx, bool add,
                         float* scratch) {
    const uint8_t* mask = b.mask == NONE ? nullptr : reinterpret_cast<const uint8_t*>(A + b.mask);
    be.batchnorm_conv_backward(dres, G + b.gamma, G + b.beta, dy, mask, A + b.in, P + b.gamma, A + b.mean,
                               A + b.invstd, b.relu, train, G + c.w, dx, A + c.in, P + c.w, c.s, add, scratch);
  };

  Tensor dx;
  if (is_resnet_) {
    // S0 holds the gradient flowing down the trunk; S1..S3 are per-block temporaries.
    be.global_avgpool_backward(S[0], grad_out.f32(), N, I.head_HW, I.head_C);
    for (size_t bi = I.blocks.size(); bi-- > 0;) {
      const Block& blk = I.blocks[bi];
      const size_t n = blk.convs.size();
      // The (BN_i, conv_i) pairs, last first, from the norm's output gradient in S0 to the conv's
      // input gradient in S0 (the same buffer: three buffers in all keep resnet18-cifar b128's
      // gradients in this CPU's L3; a fourth made its step 4 % slower); the last norm's residual
      // gradient (after its ReLU) goes to S2; S1 is the pairs' scratch.
      for (size_t i = n; i-- > 0;) {
        float* dres = i == n - 1 ? S[2] : nullptr;
        if (i == 0 && !blk.down) {
          // identity shortcut: the first conv's input gradient is added to the residual's (S2), which
          // then becomes the trunk gradient
          bn_conv_bwd(blk.bns[0], blk.convs[0], S[0], dres, S[2], true, S[1]);
          std::swap(S[0], S[2]);
          break;
        }
        bn_conv_bwd(blk.bns[i], blk.convs[i], S[0], dres, S[0], false, S[1]);
      }
      if (blk.down)  // the downsample's input gradient is added to the main branch's
        bn_conv_bwd(blk.dbn, blk.dconv, S[2], nullptr, S[0], true, S[1]);
    }
    const float* dstem = S[0];
    if (I.pool) {
      be.maxpool2d_backward(S[1], S[0], reinterpret_cast<const int32_t*>(A + I.pool_argmax), I.pool_shape);
      dstem = S[1];
    }
    float* scratch = dstem == S[1] ? S[0] : S[1];
    float* dinput = S[2];
    bn_conv_bwd(I.stem_bn, I.stem_conv, dstem, nullptr, input_grad ? dinput : nullptr, false, scratch);
    if (input_grad) {
      dx = empty_tensor(be, {N, in_channels_, I.H, I.W});
      be.nhwc_to_nchw(dx.f32(), dinput, N, in_channels_, I.H, I.W);
    }
  } else {
    // i = 2: dx -> S0, BN -> S1; i = 1: dx -> S2, BN -> S3; i = 0: dx -> the returned tensor.
    const float* dy = grad_out.f32();
    for (int i = 2; i >= 0; --i) {
      const LinearLayer& L = I.lin[i];
      // dW += dy^T x ; db += colsum(dy) ; dx = dy W
      be.gemm(true, false, L.out_dim, L.in_dim, N, 1.f, dy, L.out_dim, A + L.in, L.in_dim, 1.f, G + L.w, L.in_dim);
      if (L.b != NONE) be.sum_rows(G + L.b, dy, N, L.out_dim);
      if (i == 0) {
        if (!input_grad) break;
        dx = empty_tensor(be, {N, L.in_dim});
        be.gemm(false, false, N, L.in_dim, L.out_dim, 1.f, dy, L.out_dim, P + L.w, L.in_dim, 0.f, dx.f32(), L.in_dim);
      } else {
        float* dxl = S[2 * (2 - i)];
        float* dbn = S[2 * (2 - i) + 1];
        be.gemm(false, false, N, L.in_dim, L.out_dim, 1.f, dy, L.out_dim, P + L.w, L.in_dim, 0.f, dxl, L.in_dim);
        bn_bwd(I.pbn[i - 1], dbn, nullptr, dxl);
        dy = dbn;
      }
    }
  }
  return dx;
}

void Model::zero_grad() { backend_->fill(grad_arena_.f32(), 0.f, param_count_); }

// ---------------------------------------------------------------------------------------------
// named tensors

Tensor Model::to_pytorch_layout(const ArenaEntry& e, const float* arena) const {
  std::vector<float> host(e.numel);
  backend_->download(host.data(), arena + e.offset, e.numel * sizeof(float));
  if (e.krsc) {
    const int K = e.shape[0], C = e.shape[1], R = e.shape[2], S = e.shape[3];
    std::vector<float> o(e.numel);
    for (int k = 0; k < K; ++k)
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s)
          for (int c = 0; c < C; ++c)
            o[((static_cast<size_t>(k) * C + c) * R + r) * S + s] = host[((static_cast<size_t>(k) * R + r) * S + s) * C + c];
    host.swap(o);
  }
  Tensor t = empty_tensor(*backend_, e.shape);
  backend_->upload(t.f32(), host.data(), e.numel * sizeof(float));
  return t;
}

void Model::from_pytorch_layout(const ArenaEntry& e, float* arena, const Tensor& t) const {
  std::vector<float> host(e.numel);
  t.backend().download(host.data(), t.f32(), e.numel * sizeof(float));
  if (e.krsc) {
    const int K = e.shape[0], C = e.shape[1], R = e.shape[2], S = e.shape[3];
    std::vector<float> o(e.numel);
    for (int k = 0; k < K; ++k)
      for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r)
          for (int s = 0; s < S; ++s)
            o[((static_cast<size_t>(k) * R + r) * S + s) * C + c] = host[((static_cast<size_t>(k) * C + c) * R + r) * S + s];
    host.swap(o);
  }
  backend_->upload(arena + e.offset, host.data(), e.numel * sizeof(float));
}

std::vector<std::pair<std::string, Tensor>> Model::parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const ArenaEntry& e : params_) out.emplace_back(e.name, to_pytorch_layout(e, param_arena_.f32()));
  return out;
}

std::vector<std::pair<std::string, Tensor>> Model::gradients() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const ArenaEntry& e : params_) out.emplace_back(e.name, to_pytorch_layout(e, grad_arena_.f32()));
  return out;
}

std::vector<std::pair<std::string, Tensor>> Model::buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    const ArenaEntry& e = buffers_[i];
    out.emplace_back(e.name, to_pytorch_layout(e, buffer_arena_.f32()));
    if (i % 2 == 1) {  // after running_var: the counter of this BN
      const std::string prefix = bn_prefix(buffers_[i - 1].name);
      Tensor t = empty_tensor(*backend_, {}, DType::Int32);
      const int64_t v = num_batches_tracked_[i / 2];
      const int32_t v32 = static_cast<int32_t>(std::min<int64_t>(v, std::numeric_limits<int32_t>::max()));
      backend_->upload(t.i32(), &v32, sizeof(int32_t));
      out.emplace_back(prefix + ".num_batches_tracked", t);
    }
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> Model::state_dict() const {
  auto out = parameters();
  for (auto& kv : buffers()) out.push_back(std::move(kv));
  return out;
}

void Model::load_state_dict(const std::vector<std::pair<std::string, Tensor>>& tensors, bool strict) {
  // Validate everything first; then copy. A failed load leaves the model unchanged.
  std::unordered_map<std::string, std::pair<int, size_t>> index;  // name -> (0 param, 1 buffer, 2 counter; i)
  for (size_t i = 0; i < params_.size(); ++i) index[params_[i].name] = {0, i};
  for (size_t i = 0; i < buffers_.size(); ++i) index[buffers_[i].name] = {1, i};
  for (size_t i = 0; i < num_batches_tracked_.size(); ++i) index[bn_prefix(buffers_[2 * i].name) + ".num_batches_tracked"] = {2, i};
  std::set<std::string> seen;
  std::vector<std::string> unknown;
  for (const auto& [name, t] : tensors) {
    auto it = index.find(name);
    if (it == index.end()) {
      if (is_resnet_ && name.rfind("fc.", 0) == 0) continue;  // torchvision classifier
      unknown.push_back(name);
      continue;
    }
    MVEB_CHECK(t.defined(), "E_ARG", "state dict entry '", name, "' is missing its tensor");
    MVEB_CHECK(seen.insert(name).second, "E_FORMAT", "state dict entry '", name, "' appears twice");
    const auto [kind, i] = it->second;
    if (kind == 2) {
      MVEB_CHECK(t.numel() == 1, "E_SHAPE", "'", name, "': expected a scalar, found shape ", shape_string(t.shape));
    } else {
      const ArenaEntry& e = kind == 0 ? params_[i] : buffers_[i];
      MVEB_CHECK(t.dtype == DType::Float32, "E_DTYPE", "'", name, "': expected dtype float32, found ", dtype_name(t.dtype));
      MVEB_CHECK(t.shape == e.shape, "E_SHAPE", "'", name, "': expected shape ", shape_string(e.shape), ", found ",
                 shape_string(t.shape));
    }
  }
  if (strict) {
    std::vector<std::string> missing;
    for (const auto& kv : index)
      if (!seen.count(kv.first)) missing.push_back(kv.first);
    std::sort(missing.begin(), missing.end());
    auto list = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size() && i < 5; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > 5) s += ", ... (" + std::to_string(v.size()) + " in all)";
      return s;
    };
    MVEB_CHECK(unknown.empty(), "E_FORMAT", "strict load: unexpected entries: ", list(unknown));
    MVEB_CHECK(missing.empty(), "E_FORMAT", "strict load: missing entries: ", list(missing));
  }
  for (const auto& [name, t] : tensors) {
    auto it = index.find(name);
    if (it == index.end()) continue;
    const auto [kind, i] = it->second;
    if (kind == 0) from_pytorch_layout(params_[i], param_arena_.f32(), t);
    else if (kind == 1) from_pytorch_layout(buffers_[i], buffer_arena_.f32(), t);
    else if (t.dtype == DType::Int32) {
      int32_t v;
      t.backend().download(&v, t.i32(), sizeof(v));
      num_batches_tracked_[i] = v;
    } else {
      float v;
      t.backend().download(&v, t.f32(), sizeof(v));
      num_batches_tracked_[i] = static_cast<int64_t>(v);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// training helpers

std::unique_ptr<Model> Model::clone() const {
  ResnetConfig rc = impl_->rcfg;
  ProjectorConfig pc = impl_->pcfg;
  rc.initialize = pc.initialize = false;  // everything is copied below
  std::unique_ptr<Model> m = is_resnet_ ? resnet(*backend_, rc) : projector(*backend_, pc);
  backend_->copy(m->param_arena_.f32(), param_arena_.f32(), param_count_ * sizeof(float));
  backend_->copy(m->buffer_arena_.f32(), buffer_arena_.f32(), buffer_count_ * sizeof(float));
  m->num_batches_tracked_ = num_batches_tracked_;
  return m;
}

// E_SHAPE unless src has this model's architecture (parameter and buffer layout), E_DEVICE unless
// it lives on the same backend; `what` names the calling method.
void Model::check_same_architecture(const Model& src, const char* what) const {
  bool same = src.is_resnet_ == is_resnet_ && src.param_count_ == param_count_ && src.buffer_count_ == buffer_count_ &&
              src.params_.size() == params_.size();
  for (size_t i = 0; same && i < params_.size(); ++i) same = src.params_[i].shape == params_[i].shape;
  MVEB_CHECK(same, "E_SHAPE", what, ": the models differ in architecture (", src.param_count_, " vs ", param_count_,
             " parameters)");
  MVEB_CHECK(src.backend_ == backend_, "E_DEVICE", what, ": models are on different devices");
}

void Model::copy_from(const Model& src, bool parameters, bool buffers) {
  check_same_architecture(src, "copyFrom");
  if (&src == this) return;
  if (parameters) backend_->copy(param_arena_.f32(), src.param_arena_.f32(), param_count_ * sizeof(float));
  if (buffers) {
    backend_->copy(buffer_arena_.f32(), src.buffer_arena_.f32(), buffer_count_ * sizeof(float));
    num_batches_tracked_ = src.num_batches_tracked_;
  }
}

void Model::ema_update(const Model& online, float m) {
  MVEB_CHECK(online.param_count_ == param_count_ && online.params_.size() == params_.size() &&
                 online.is_resnet_ == is_resnet_,
             "E_SHAPE", "emaUpdate: the online model has ", online.param_count_,
             " parameters, this (target) model ", param_count_, ": they must have the same architecture");
  MVEB_CHECK(online.backend_ == backend_, "E_DEVICE", "emaUpdate: models are on different devices");
  MVEB_CHECK(std::isfinite(m) && m >= 0 && m <= 1, "E_ARG", "emaUpdate: momentum must be in [0, 1], found ", m);
  backend_->ema_update(param_arena_.f32(), online.param_arena_.f32(), param_count_, m);
}

void Model::add_gradients(const Model& src) {
  check_same_architecture(src, "addGradientsFrom");
  MVEB_CHECK(&src != this, "E_ARG", "addGradientsFrom: the source is this model");
  backend_->axpy(grad_arena_.f32(), 1.f, src.grad_arena_.f32(), param_count_);
}

void Model::merge_running_stats(const Model& before, const std::vector<const Model*>& earlier) {
  check_same_architecture(before, "mergeRunningStats");
  MVEB_CHECK(&before != this, "E_ARG", "mergeRunningStats: the snapshot must be a model other than this one");
  for (const Model* m : earlier) {
    MVEB_CHECK(m != nullptr && m != this && m != &before, "E_ARG",
               "mergeRunningStats: each earlier run must be a model other than this one and the snapshot");
    check_same_architecture(*m, "mergeRunningStats");
  }
  const size_t V = earlier.size() + 1;
  float* r = buffer_arena_.f32();
  const float* r0 = before.buffer_arena_.f32();
  for (size_t v = 0; v + 1 < V; ++v) {
    const float w = static_cast<float>(std::pow(1.0 - BN_MOMENTUM, static_cast<double>(V - 1 - v)));
    backend_->axpy(r, w, earlier[v]->buffer_arena_.f32(), buffer_count_);
    backend_->axpy(r, -w, r0, buffer_count_);
    for (size_t i = 0; i < num_batches_tracked_.size(); ++i)
      num_batches_tracked_[i] += earlier[v]->num_batches_tracked_[i] - before.num_batches_tracked_[i];
  }
}

bool Model::optimizer_step(const OptimizerOptions& o) {
  MVEB_CHECK(std::isfinite(o.lr) && std::isfinite(o.momentum) && std::isfinite(o.weight_decay) &&
                 std::isfinite(o.trust),
             "E_ARG", "optimizerStep: lr, momentum, weightDecay and trust must be finite");
  if (!backend_->all_finite(grad_arena_.f32(), param_count_)) return false;
  if (!momentum_arena_.defined()) {
    momentum_arena_ = empty_tensor(*backend_, {static_cast<int64_t>(param_count_)});
    backend_->fill(momentum_arena_.f32(), 0.f, param_count_);
  }
  float* P = param_arena_.f32();
  float* Mo = momentum_arena_.f32();
  float* G = grad_arena_.f32();
  if (!o.lars) {
    backend_->sgd_step(P, Mo, G, param_count_, o.lr, o.momentum, o.weight_decay);
  } else {
    std::vector<Backend::LarsTensor> tensors;
    tensors.reserve(params_.size());
    for (const ArenaEntry& e : params_) tensors.push_back({e.offset, e.numel, e.matrix});
    backend_->lars_step_tensors(P, Mo, G, tensors, o.lr, o.momentum, o.weight_decay, o.trust);
  }
  return true;
}

std::vector<std::pair<std::string, Tensor>> Model::optimizer_state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  if (!momentum_arena_.defined()) return out;
  for (const ArenaEntry& e : params_) out.emplace_back(e.name, to_pytorch_layout(e, momentum_arena_.f32()));
  return out;
}

void Model::load_optimizer_state(const std::vector<std::pair<std::string, Tensor>>& state) {
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index[params_[i].name] = i;
  std::set<std::string> seen;
  for (const auto& [name, t] : state) {
    auto it = index.find(name);
    MVEB_CHECK(it != index.end(), "E_FORMAT", "optimizer state: unexpected entry '", name, "'");
    const ArenaEntry& e = params_[it->second];
    MVEB_CHECK(t.defined() && t.dtype == DType::Float32, "E_DTYPE", "optimizer state '", name, "': expected float32");
    MVEB_CHECK(t.shape == e.shape, "E_SHAPE", "optimizer state '", name, "': expected shape ", shape_string(e.shape),
               ", found ", shape_string(t.shape));
    seen.insert(name);
  }
  MVEB_CHECK(seen.size() == params_.size(), "E_FORMAT", "optimizer state: expected ", params_.size(),
             " momentum buffers, found ", seen.size());
  if (!momentum_arena_.defined()) momentum_arena_ = empty_tensor(*backend_, {static_cast<int64_t>(param_count_)});
  for (const auto& [name, t] : state) from_pytorch_layout(params_[index[name]], momentum_arena_.f32(), t);
}

}  // namespace mveb
