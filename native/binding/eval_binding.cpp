// eval_binding.cpp: the native half of evaluation (lib/eval/*.ts): the weighted kNN classifier and
// the linear probe's trainer, both on frozen feature matrices.
//   knnScores(train [Ntr,D], trainLabels int32 [Ntr], test [Nte,D], {k, temperature, classes})
//       -> Promise<Float32Array [Nte*classes]>   (per-class weighted votes, spec section 6.2)
//   linearProbe(trainX [N,D], trainY int32 [N], testX [M,D], {classes, epochs, batchSize, lr,
//       momentum, weightDecay, lars, trust, seed}) -> Promise<{ logits: Float32Array [M*classes],
//       weight: Float32Array [classes*D], bias: Float32Array [classes], losses: Float64Array [epochs] }>
// Tested by test/eval.test.ts against brute-force JavaScript references
// (MVEB_ADDON_PATH=... npx jest test/eval.test.ts).
//
// kNN: features are L2-normalised on their own device (backend op l2_normalize_rows_forward), then
// cosine similarities are formed a block of test rows at a time with the backend's GEMM
// (sim[c, Ntr] = test_block[c, D] . train^T) and copied to the host, where each row keeps its k
// largest entries in a min-heap (ties broken by lower train index, so the result is deterministic
// and matches a sort-based reference). Napkin math at Fashion-MNIST scale: 10k x 60k x 64 x 2 =
// 77 GFLOP (~0.4 s at 200 GFLOP/s) and 600M similarities through the heap filter (~1 s); the block
// size keeps the similarity buffer at <= 64 MB.
//
// Linear probe: softmax cross-entropy on a [classes, D] weight + bias, minibatch SGD with momentum
// (PyTorch semantics) or LARC-style adaptation (trust * ||w|| / (||g|| + wd ||w||), clip = False,
// as apex LARC used by the official lineval.py), cosine schedule per epoch without warm-up
// (spec section 6.1), weights N(0, 0.01^2) and zero bias. Shuffling is seeded (counter-based RNG), so
// a run is reproducible. It runs on the host: the matrices are small (D <= 2048, classes <= 1000).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "binding/common.h"
#include "core/backend.h"
#include "core/random.h"
#include "core/threadpool.h"
#include "cpu/cpu_backend.h"

namespace mveb_binding {
namespace {

using mveb::Backend;
using mveb::Tensor;

void check_matrix(const Tensor& t, const char* what) {
  mveb::check_float(t, what);
  MVEB_CHECK(t.shape.size() == 2, "E_SHAPE", what, ": expected a 2-D [rows, dim] feature matrix, found shape ",
             mveb::shape_string(t.shape));
  MVEB_CHECK(t.shape[0] > 0 && t.shape[1] > 0, "E_SHAPE", what, ": expected a non-empty matrix, found shape ",
             mveb::shape_string(t.shape));
}

std::vector<int32_t> host_labels(const Tensor& t, int64_t rows, int classes, const char* what) {
  MVEB_CHECK(t.dtype == mveb::DType::Int32, "E_DTYPE", what, ": expected int32 labels, found ", mveb::dtype_name(t.dtype));
  MVEB_CHECK(t.shape.size() == 1 && t.shape[0] == rows, "E_SHAPE", what, ": expected shape [", rows, "], found ",
             mveb::shape_string(t.shape));
  std::vector<int32_t> y(static_cast<size_t>(rows));
  t.backend().download(y.data(), t.storage->data, y.size() * sizeof(int32_t));
  for (size_t i = 0; i < y.size(); ++i) {
    MVEB_CHECK(y[i] >= 0 && y[i] < classes, "E_ARG", what, ": label ", y[i], " at index ", i, " is outside [0, ",
               classes, ")");
  }
  return y;
}

std::vector<float> host_floats(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  t.backend().download(v.data(), t.storage->data, v.size() * sizeof(float));
  return v;
}

struct KnnOptions {
  int k;
  float temperature;
  int classes;
};

// Scores [Nte, classes]: sum over the k most similar train rows of exp(sim / temperature), one-hot by label.
// The top-k selection is host work on similarities already copied off the backend; it runs on the CPU
// backend's thread pool.
std::vector<float> knn_scores(const Tensor& train, const std::vector<int32_t>& train_labels, const Tensor& test,
                              const KnnOptions& o, mveb::ThreadPool& pool) {
  Backend& b = train.backend();
  const int64_t ntr = train.dim(0), nte = test.dim(0), d = train.dim(1);
  const int k = static_cast<int>(std::min<int64_t>(o.k, ntr));

  Tensor train_n = mveb::empty_tensor(b, train.shape), test_n = mveb::empty_tensor(b, test.shape);
  Tensor norms_tr = mveb::empty_tensor(b, {ntr}), norms_te = mveb::empty_tensor(b, {nte});
  b.l2_normalize_rows_forward(train_n.f32(), norms_tr.f32(), train.f32(), static_cast<int>(ntr), static_cast<int>(d), 1e-12f);
  b.l2_normalize_rows_forward(test_n.f32(), norms_te.f32(), test.f32(), static_cast<int>(nte), static_cast<int>(d), 1e-12f);

  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(nte, (int64_t{16} << 20) / ntr));
  Tensor sim = mveb::empty_tensor(b, {block, ntr});
  std::vector<float> host_sim(static_cast<size_t>(block * ntr));
  std::vector<float> scores(static_cast<size_t>(nte * o.classes), 0.0f);
  const float inv_t = 1.0f / o.temperature;

  for (int64_t r0 = 0; r0 < nte; r0 += block) {
    const int64_t rows = std::min(block, nte - r0);
    b.gemm(false, true, static_cast<int>(rows), static_cast<int>(ntr), static_cast<int>(d), 1.0f,
           test_n.f32() + r0 * d, static_cast<int>(d), train_n.f32(), static_cast<int>(d), 0.0f, sim.f32(),
           static_cast<int>(ntr));
    b.download(host_sim.data(), sim.f32(), static_cast<size_t>(rows * ntr) * sizeof(float));
    pool.parallel_for(rows, 1, [&](int64_t rb, int64_t re, int) {
      // heap of (sim, index); "better" = larger sim, then smaller index. The heap top is the worst kept.
      std::vector<std::pair<float, int32_t>> heap;
      heap.reserve(k);
      auto worse = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& c) {
        return a.first > c.first || (a.first == c.first && a.second < c.second);  // a better than c
      };
      for (int64_t r = rb; r < re; ++r) {
        const float* s = host_sim.data() + r * ntr;
        heap.clear();
        for (int32_t j = 0; j < static_cast<int32_t>(ntr); ++j) {
          const float v = s[j];
          MVEB_CHECK(std::isfinite(v), "E_NUMERIC", "knn: similarity of test row ", r0 + r, " and train row ", j,
                     " is not finite (non-finite features?)");
          if (static_cast<int>(heap.size()) < k) {
            heap.emplace_back(v, j);
            std::push_heap(heap.begin(), heap.end(), worse);
          } else if (v > heap.front().first) {  // equal sim never replaces: the kept index is smaller
            std::pop_heap(heap.begin(), heap.end(), worse);
            heap.back() = {v, j};
            std::push_heap(heap.begin(), heap.end(), worse);
          }
        }
        float* out = scores.data() + (r0 + r) * o.classes;
        for (const auto& [v, j] : heap) out[train_labels[j]] += std::exp(v * inv_t);
      }
    });
  }
  return scores;
}

struct LinearOptions {
  int classes, epochs, batch;
  float lr, momentum, weight_decay, trust;
  bool lars;
  uint64_t seed;
};

struct LinearResult {
  std::vector<float> logits, weight, bias;
  std::vector<double> losses;
};

// One SGD / LARC update of a parameter block (PyTorch SGD semantics after the LARC rescale).
void update(float* p, float* buf, float* g, size_t n, float lr, const LinearOptions& o, bool first) {
  if (o.lars) {
    double pn = 0, gn = 0;
    for (size_t i = 0; i < n; ++i) pn += double(p[i]) * p[i], gn += double(g[i]) * g[i];
    pn = std::sqrt(pn), gn = std::sqrt(gn);
    if (pn > 0 && gn > 0) {
      const double scale = o.trust * pn / (gn + o.weight_decay * pn);
      for (size_t i = 0; i < n; ++i) g[i] = static_cast<float>((g[i] + o.weight_decay * p[i]) * scale);
    } else {
      for (size_t i = 0; i < n; ++i) g[i] += o.weight_decay * p[i];
    }
  } else {
    for (size_t i = 0; i < n; ++i) g[i] += o.weight_decay * p[i];
  }
  for (size_t i = 0; i < n; ++i) {
    buf[i] = first ? g[i] : o.momentum * buf[i] + g[i];
    p[i] -= lr * buf[i];
  }
}

LinearResult linear_probe(Backend& cpu, const std::vector<float>& x, const std::vector<int32_t>& y, int64_t n, int64_t d,
                          const std::vector<float>& test_x, int64_t m, const LinearOptions& o) {
  const int c = o.classes;
  LinearResult r;
  r.weight.resize(static_cast<size_t>(c * d));
  r.bias.assign(c, 0.0f);
  for (size_t i = 0; i < r.weight.size(); ++i) r.weight[i] = static_cast<float>(0.01 * mveb::normal01(o.seed, i));
  std::vector<float> wbuf(r.weight.size(), 0.0f), bbuf(c, 0.0f), gw(r.weight.size()), gb(c);
  std::vector<float> logits(static_cast<size_t>(o.batch * c)), xb(static_cast<size_t>(o.batch * d));
  std::vector<int64_t> order(static_cast<size_t>(n));
  bool first = true;
  for (int e = 0; e < o.epochs; ++e) {
    const float lr = static_cast<float>(o.lr * 0.5 * (1.0 + std::cos(M_PI * e / o.epochs)));
    std::iota(order.begin(), order.end(), int64_t{0});
    mveb::Rng rng(mveb::hash2(o.seed, 0x11ea7 + e));
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[static_cast<int64_t>(rng.next_u64() % (i + 1))]);
    double loss_sum = 0;
    for (int64_t s = 0; s < n; s += o.batch) {
      const int bs = static_cast<int>(std::min<int64_t>(o.batch, n - s));
      for (int i = 0; i < bs; ++i) std::memcpy(xb.data() + i * d, x.data() + order[s + i] * d, d * sizeof(float));
      // logits[bs, c] = xb[bs, d] . W^T
      cpu.gemm(false, true, bs, c, static_cast<int>(d), 1.0f, xb.data(), static_cast<int>(d), r.weight.data(),
               static_cast<int>(d), 0.0f, logits.data(), c);
      std::fill(gb.begin(), gb.end(), 0.0f);
      for (int i = 0; i < bs; ++i) {
        float* l = logits.data() + i * c;
        float mx = -INFINITY;
        for (int j = 0; j < c; ++j) l[j] += r.bias[j], mx = std::max(mx, l[j]);
        double z = 0;
        for (int j = 0; j < c; ++j) z += std::exp(double(l[j]) - mx);
        const int label = y[order[s + i]];
        loss_sum += std::log(z) + mx - l[label];
        for (int j = 0; j < c; ++j) {
          const double p = std::exp(double(l[j]) - mx) / z;
          l[j] = static_cast<float>((p - (j == label ? 1.0 : 0.0)) / bs);  // dLoss/dlogit (mean over batch)
          gb[j] += l[j];
        }
      }
      // gW[c, d] = dlogits^T[c, bs] . xb[bs, d]
      cpu.gemm(true, false, c, static_cast<int>(d), bs, 1.0f, logits.data(), c, xb.data(), static_cast<int>(d), 0.0f,
               gw.data(), static_cast<int>(d));
      update(r.weight.data(), wbuf.data(), gw.data(), gw.size(), lr, o, first);
      update(r.bias.data(), bbuf.data(), gb.data(), gb.size(), lr, o, first);
      first = false;
    }
    const double mean_loss = loss_sum / static_cast<double>(n);
    MVEB_CHECK(std::isfinite(mean_loss), "E_NUMERIC", "linear probe: the training loss became non-finite in epoch ", e,
               " (lr ", o.lr, " too high, or non-finite features)");
    r.losses.push_back(mean_loss);
  }
  r.logits.resize(static_cast<size_t>(m * c));
  cpu.gemm(false, true, static_cast<int>(m), c, static_cast<int>(d), 1.0f, test_x.data(), static_cast<int>(d),
           r.weight.data(), static_cast<int>(d), 0.0f, r.logits.data(), c);
  for (int64_t i = 0; i < m; ++i)
    for (int j = 0; j < c; ++j) r.logits[i * c + j] += r.bias[j];
  return r;
}

Napi::Float32Array to_f32(Napi::Env env, const std::vector<float>& v) {
  auto a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
  return a;
}

int positive_int(Napi::Env env, const Napi::Object& o, const char* key, double fallback, double max) {
  const double v = get_number(env, o, key, fallback);
  if (!(v >= 1 && v <= max && std::floor(v) == v))
    throw mveb::Error("E_ARG", std::string(key) + ": expected an integer in [1, " + std::to_string(static_cast<int64_t>(max)) +
                                   "], found " + number_string(v));
  return static_cast<int>(v);
}

float positive_float(Napi::Env env, const Napi::Object& o, const char* key, double fallback, bool allow_zero) {
  const double v = get_number(env, o, key, fallback);
  if (!(std::isfinite(v) && (allow_zero ? v >= 0 : v > 0)))
    throw mveb::Error("E_ARG", std::string(key) + ": expected a finite number " + (allow_zero ? ">= 0" : "> 0") +
                                   ", found " + number_string(v));
  return static_cast<float>(v);
}

Napi::Object options_arg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return Napi::Object::New(info.Env());
  if (!info[i].IsObject()) throw mveb::Error("E_ARG", "options: expected an object");
  return info[i].As<Napi::Object>();
}

// Train and test feature matrices [rows, D] of the same dimension D.
void check_feature_pair(const Tensor& train, const Tensor& test, const char* op) {
  check_matrix(train, "train features");
  check_matrix(test, "test features");
  MVEB_CHECK(train.dim(1) == test.dim(1), "E_SHAPE", op, ": train features have dimension ", train.dim(1),
             " but test features have ", test.dim(1));
}

Napi::Value KnnScores(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Tensor train = unwrap_tensor(env, info[0], "train features");
    Tensor labels = unwrap_tensor(env, info[1], "train labels");
    Tensor test = unwrap_tensor(env, info[2], "test features");
    Napi::Object opt = options_arg(info, 3);
    check_feature_pair(train, test, "knn");
    mveb::check_same_device(train, test, "knn: train and test features");
    KnnOptions o;
    o.k = positive_int(env, opt, "k", 200, 1e6);
    o.temperature = positive_float(env, opt, "temperature", 0.1, false);
    o.classes = positive_int(env, opt, "classes", 0, 1e6);
    std::vector<int32_t> y = host_labels(labels, train.dim(0), o.classes, "train labels");
    return run_async<std::vector<float>>(
        env, [train, test, y = std::move(y), o, pool = &static_cast<mveb::CpuBackend&>(runtime(env).cpu()).pool()] {
          return knn_scores(train, y, test, o, *pool);
        },
        [](Napi::Env e, std::vector<float>& s) -> Napi::Value { return to_f32(e, s); });
  });
}

Napi::Value LinearProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Tensor x = unwrap_tensor(env, info[0], "train features");
    Tensor labels = unwrap_tensor(env, info[1], "train labels");
    Tensor tx = unwrap_tensor(env, info[2], "test features");
    Napi::Object opt = options_arg(info, 3);
    check_feature_pair(x, tx, "linear probe");
    LinearOptions o;
    o.classes = positive_int(env, opt, "classes", 0, 1e6);
    o.epochs = positive_int(env, opt, "epochs", 90, 1e6);
    o.batch = positive_int(env, opt, "batchSize", 256, 1 << 20);
    o.lr = positive_float(env, opt, "lr", 0.1 * o.batch / 256.0, false);
    o.momentum = positive_float(env, opt, "momentum", 0.9, true);
    o.weight_decay = positive_float(env, opt, "weightDecay", 0, true);
    o.trust = positive_float(env, opt, "trust", 0.001, false);
    o.lars = get_bool(env, opt, "lars", false);
    o.seed = static_cast<uint64_t>(get_number(env, opt, "seed", 0));
    std::vector<int32_t> y = host_labels(labels, x.dim(0), o.classes, "train labels");
    std::vector<float> hx = host_floats(x), htx = host_floats(tx);
    const int64_t n = x.dim(0), d = x.dim(1), m = tx.dim(0);
    Backend* cpu = &runtime(env).cpu();
    return run_async<LinearResult>(
        env,
        [cpu, hx = std::move(hx), y = std::move(y), htx = std::move(htx), n, d, m, o] {
          return linear_probe(*cpu, hx, y, n, d, htx, m, o);
        },
        [](Napi::Env e, LinearResult& r) -> Napi::Value {
          Napi::Object out = Napi::Object::New(e);
          out.Set("logits", to_f32(e, r.logits));
          out.Set("weight", to_f32(e, r.weight));
          out.Set("bias", to_f32(e, r.bias));
          auto losses = Napi::Float64Array::New(e, r.losses.size());
          for (size_t i = 0; i < r.losses.size(); ++i) losses[i] = r.losses[i];
          out.Set("losses", losses);
          return out;
        });
  });
}

}  // namespace

void register_eval(Napi::Env env, Napi::Object exports) {
  exports.Set("knnScores", Napi::Function::New(env, KnnScores, "knnScores"));
  exports.Set("linearProbe", Napi::Function::New(env, LinearProbe, "linearProbe"));
}

}  // namespace mveb_binding
