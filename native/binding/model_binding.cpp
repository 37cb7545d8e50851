// model_binding.cpp: N-API functions of the model area (native/core/model.h, safetensors.h), used by
// lib/model.ts and lib/safetensors.ts. A model crosses the boundary as a type-tagged External
// holding a shared ModelBox; every call on one model takes the box's mutex, so an async forward and
// a synchronous parameters() never race, and a disposed model answers E_DISPOSED. Compute-heavy
// calls (forward, backward, optimizerStep, emaUpdate, safetensors encode/decode) run on libuv
// workers through run_async; forwardAll / backwardAll run several models' calls side by side
// (Backend::run_concurrently). Tested by test/model.test.ts.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "binding/common.h"
#include "core/model.h"
#include "core/safetensors.h"

namespace mveb_binding {

namespace {

struct ModelBox {
  std::mutex mutex;
  std::unique_ptr<mveb::Model> model;
  mveb::Device device = mveb::Device::CPU;
};
using BoxPtr = std::shared_ptr<ModelBox>;

const napi_type_tag kModelTag = {0x6d7665626d6f6465ull, 0x6c48616e646c6531ull};  // "mvebmodelHandle1"

Napi::Value wrap_model(Napi::Env env, std::unique_ptr<mveb::Model> m, mveb::Device device) {
  auto* holder = new BoxPtr(std::make_shared<ModelBox>());
  (*holder)->model = std::move(m);
  (*holder)->device = device;
  auto ext = Napi::External<BoxPtr>::New(env, holder, [](Napi::Env, BoxPtr* p) { delete p; });
  ext.TypeTag(&kModelTag);
  return ext;
}

BoxPtr unwrap_box(Napi::Env env, const Napi::Value& v) {
  if (!v.IsExternal() || !v.As<Napi::External<BoxPtr>>().CheckTypeTag(&kModelTag))
    throw_js(env, "E_ARG", "expected a model handle");
  return *v.As<Napi::External<BoxPtr>>().Data();
}

// Locks the box and checks the model is alive.
struct Locked {
  BoxPtr box;
  std::unique_lock<std::mutex> lock;
  explicit Locked(BoxPtr b) : box(std::move(b)), lock(box->mutex) {
    MVEB_CHECK(box->model != nullptr, "E_DISPOSED", "the model was used after dispose()");
  }
  mveb::Model& operator*() { return *box->model; }
  mveb::Model* operator->() { return box->model.get(); }
};

// Locks two different boxes together (std::scoped_lock's deadlock avoidance: two calls on the same
// pair in either order never deadlock) and checks both models are alive; what: the JS method's name.
struct LockedPair {
  std::scoped_lock<std::mutex, std::mutex> lock;
  mveb::Model &first, &second;
  LockedPair(const BoxPtr& a, const BoxPtr& b, const char* what)
      : lock(a->mutex, b->mutex), first(alive(a, what)), second(alive(b, what)) {}

 private:
  static mveb::Model& alive(const BoxPtr& box, const char* what) {
    MVEB_CHECK(box->model != nullptr, "E_DISPOSED", what, ": a model was used after dispose()");
    return *box->model;
  }
};

// Locks several different boxes in address order (against another such locker, or LockedPair's
// std::lock with its back-off, no deadlock) and checks every model is alive; what: the JS method.
struct LockedAll {
  std::vector<std::unique_lock<std::mutex>> locks;
  std::vector<mveb::Model*> models;
  LockedAll(const std::vector<BoxPtr>& boxes, const char* what) {
    std::vector<ModelBox*> order;
    for (const BoxPtr& b : boxes) order.push_back(b.get());
    std::sort(order.begin(), order.end());
    for (ModelBox* b : order) locks.emplace_back(b->mutex);
    for (const BoxPtr& b : boxes) {
      MVEB_CHECK(b->model != nullptr, "E_DISPOSED", what, ": a model was used after dispose()");
      models.push_back(b->model.get());
    }
  }
};

Napi::Object named_to_js(Napi::Env env, const std::vector<std::pair<std::string, mveb::Tensor>>& v) {
  Napi::Array names = Napi::Array::New(env, v.size());
  Napi::Array tensors = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    names.Set(static_cast<uint32_t>(i), Napi::String::New(env, v[i].first));
    tensors.Set(static_cast<uint32_t>(i), wrap_tensor(env, v[i].second));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("names", names);
  o.Set("tensors", tensors);
  return o;
}

// The JS array v (else E_ARG "<what>: <not_array>") and the tensors of tensors_v, one per element
// (else E_ARG "<what>: n <items> but m tensors").
std::pair<Napi::Array, std::vector<mveb::Tensor>> array_with_tensors(Napi::Env env, const Napi::Value& v,
                                                                     const Napi::Value& tensors_v, const char* what,
                                                                     const char* not_array, const char* items) {
  if (!v.IsArray()) throw_js(env, "E_ARG", std::string(what) + ": " + not_array);
  Napi::Array a = v.As<Napi::Array>();
  std::vector<mveb::Tensor> tensors = unwrap_tensor_array(env, tensors_v, what);
  if (a.Length() != tensors.size())
    throw_js(env, "E_ARG", std::string(what) + ": " + std::to_string(a.Length()) + " " + items + " but " +
                               std::to_string(tensors.size()) + " tensors");
  return {a, std::move(tensors)};
}

// E_ARG with message unless the boxes are different models.
void check_distinct(Napi::Env env, const std::vector<BoxPtr>& boxes, const std::string& message) {
  for (size_t i = 0; i < boxes.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (boxes[i] == boxes[j]) throw_js(env, "E_ARG", message);
}

std::vector<std::pair<std::string, mveb::Tensor>> named_from_js(Napi::Env env, const Napi::Value& names_v,
                                                                const Napi::Value& tensors_v, const char* what) {
  auto [names, tensors] = array_with_tensors(env, names_v, tensors_v, what, "names must be an array of strings", "names");
  std::vector<std::pair<std::string, mveb::Tensor>> out;
  for (uint32_t i = 0; i < names.Length(); ++i) {
    Napi::Value n = names.Get(i);
    if (!n.IsString()) throw_js(env, "E_ARG", std::string(what) + ": names must be strings");
    out.emplace_back(n.As<Napi::String>().Utf8Value(), tensors[i]);
  }
  return out;
}

Napi::Object options(Napi::Env env, const Napi::Value& v) {
  if (!v.IsObject()) throw_js(env, "E_ARG", "expected an options object");
  return v.As<Napi::Object>();
}

int get_int(Napi::Env env, const Napi::Object& o, const char* key, double fallback, double lo, double hi) {
  const double x = get_number(env, o, key, fallback);
  // (the bounds first: converting a double past 2^63 to int64 is undefined)
  if (x < lo || x > hi || x != std::floor(x))
    throw_js(env, "E_ARG", std::string("option '") + key + "' must be an integer in [" + std::to_string(static_cast<int64_t>(lo)) +
                               ", " + std::to_string(static_cast<int64_t>(hi)) + "], found " + number_string(x));
  return static_cast<int>(x);
}

// modelResnet({depth, stem, inChannels, widthMultiplier, zeroInitResidual, seed, device}) -> handle
Napi::Value model_resnet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Napi::Object o = options(env, info[0]);
    mveb::ResnetConfig c;
    c.depth = get_int(env, o, "depth", 50, 0, 1000);
    const std::string stem = get_string(env, o, "stem", "imagenet");
    if (stem != "imagenet" && stem != "cifar") throw_js(env, "E_ARG", "stem must be 'imagenet' or 'cifar', found '" + stem + "'");
    c.cifar_stem = stem == "cifar";
    c.in_channels = get_int(env, o, "inChannels", 3, 1, 4096);
    c.width_multiplier = get_number(env, o, "widthMultiplier", 1);
    c.zero_init_residual = get_bool(env, o, "zeroInitResidual", false);
    c.seed = static_cast<uint64_t>(get_int(env, o, "seed", 0, 0, 2147483647));
    const mveb::Device device = parse_device(env, get_string(env, o, "device", "cpu"));
    return wrap_model(env, mveb::Model::resnet(runtime(env).backend(device), c), device);
  });
}

// modelProjector({inDim, hiddenDim, outDim, seed, device}) -> handle
Napi::Value model_projector(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Napi::Object o = options(env, info[0]);
    mveb::ProjectorConfig c;
    c.in_dim = get_int(env, o, "inDim", 2048, 1, 1 << 20);
    c.hidden_dim = get_int(env, o, "hiddenDim", 2048, 1, 1 << 20);
    c.out_dim = get_int(env, o, "outDim", 2048, 1, 1 << 20);
    c.seed = static_cast<uint64_t>(get_int(env, o, "seed", 0, 0, 2147483647));
    const mveb::Device device = parse_device(env, get_string(env, o, "device", "cpu"));
    return wrap_model(env, mveb::Model::projector(runtime(env).backend(device), c), device);
  });
}

Napi::Value model_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Locked m(unwrap_box(env, info[0]));
    Napi::Object o = Napi::Object::New(env);
    o.Set("featureDim", m->feature_dim());
    o.Set("inChannels", m->in_channels());
    o.Set("kind", m->is_resnet() ? "resnet" : "projector");
    o.Set("device", mveb::device_name(m.box->device));
    o.Set("parameterCount", static_cast<double>(m->parameter_count()));
    o.Set("activationBytes", static_cast<double>(m->activation_bytes()));
    return o;
  });
}

// modelActivationBytesFor(model, shape): the activation bytes a training forward of that input shape
// would plan (nothing planned or allocated)
Napi::Value model_activation_bytes_for(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Locked m(unwrap_box(env, info[0]));
    return Napi::Number::New(env, static_cast<double>(m->activation_bytes_for(parse_shape(env, info[1]))));
  });
}

Napi::Value model_dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr box = unwrap_box(env, info[0]);
    std::lock_guard<std::mutex> lock(box->mutex);
    box->model.reset();
    return env.Undefined();
  });
}

// modelForward(h, x, train, saveForBackward = true) -> Promise<TensorHandle>
Napi::Value model_forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr box = unwrap_box(env, info[0]);
    mveb::Tensor x = unwrap_tensor(env, info[1], "forward input");
    const bool train = info[2].ToBoolean().Value();
    const bool save = info[3].IsUndefined() ? true : info[3].ToBoolean().Value();
    return run_async<mveb::Tensor>(
        env, [box, x, train, save]() { Locked m(box); return m->forward(x, train, save); },
        [](Napi::Env e, mveb::Tensor& t) -> Napi::Value { return wrap_tensor(e, t); });
  });
}

// modelBackward(h, gradOut, inputGrad) -> Promise<TensorHandle | null>
Napi::Value model_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr box = unwrap_box(env, info[0]);
    mveb::Tensor g = unwrap_tensor(env, info[1], "backward gradOut");
    const bool input_grad = info[2].ToBoolean().Value();
    return run_async<mveb::Tensor>(
        env, [box, g, input_grad]() { Locked m(box); return m->backward(g, input_grad); },
        [](Napi::Env e, mveb::Tensor& t) -> Napi::Value { return t.defined() ? Napi::Value(wrap_tensor(e, t)) : e.Null(); });
  });
}

// Model i's call on tensors[i] for every i, through Backend::run_concurrently (side by side on the
// CPU's pool threads); resolves to the results in order (null for undefined tensors). The models
// must be different ones on one device. what: the JS method's name.
Napi::Value run_models(Napi::Env env, const Napi::Value& handles_v, const Napi::Value& tensors_v, const char* what,
                       std::function<mveb::Tensor(mveb::Model&, const mveb::Tensor&)> call) {
  auto paired = array_with_tensors(env, handles_v, tensors_v, what, "expected an array of models", "models");
  const Napi::Array handles = paired.first;
  const std::vector<mveb::Tensor> tensors = std::move(paired.second);  // (captured below: no structured binding)
  std::vector<BoxPtr> boxes;
  for (uint32_t i = 0; i < handles.Length(); ++i) boxes.push_back(unwrap_box(env, handles.Get(i)));
  check_distinct(env, boxes, std::string(what) + ": a model appears twice (its calls cannot run side by side)");
  const std::string name = what;
  return run_async<std::vector<mveb::Tensor>>(
      env,
      [boxes, tensors, call, name]() {
        LockedAll all(boxes, name.c_str());
        std::vector<mveb::Tensor> out(tensors.size());
        if (all.models.empty()) return out;
        mveb::Backend& be = all.models[0]->backend();
        for (const mveb::Model* m : all.models)
          MVEB_CHECK(&m->backend() == &be, "E_DEVICE", name, ": the models are on different devices");
        std::vector<std::function<void()>> tasks;
        for (size_t i = 0; i < tensors.size(); ++i)
          tasks.push_back([&, i]() { out[i] = call(*all.models[i], tensors[i]); });
        be.run_concurrently(tasks);
        return out;
      },
      [](Napi::Env e, std::vector<mveb::Tensor>& ts) -> Napi::Value {
        Napi::Array a = Napi::Array::New(e, ts.size());
        for (size_t i = 0; i < ts.size(); ++i)
          a.Set(static_cast<uint32_t>(i), ts[i].defined() ? Napi::Value(wrap_tensor(e, ts[i])) : e.Null());
        return a;
      });
}

// modelsForward(handles, xs, train, saveForBackward) -> Promise<TensorHandle[]>
Napi::Value models_forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const bool train = info[2].ToBoolean().Value(), save = info[3].ToBoolean().Value();
    return run_models(env, info[0], info[1], "forwardAll",
                      [train, save](mveb::Model& m, const mveb::Tensor& x) { return m.forward(x, train, save); });
  });
}

// modelsBackward(handles, gradOuts, inputGrad) -> Promise<(TensorHandle | null)[]>
Napi::Value models_backward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const bool input_grad = info[2].ToBoolean().Value();
    return run_models(env, info[0], info[1], "backwardAll",
                      [input_grad](mveb::Model& m, const mveb::Tensor& g) { return m.backward(g, input_grad); });
  });
}

// modelMergeRunningStats(h, before, earlier[]): synchronous (two axpys over the buffers per run)
Napi::Value model_merge_running_stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::vector<BoxPtr> boxes{unwrap_box(env, info[0]), unwrap_box(env, info[1])};
    if (!info[2].IsArray()) throw_js(env, "E_ARG", "mergeRunningStats: expected an array of models");
    Napi::Array earlier = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < earlier.Length(); ++i) boxes.push_back(unwrap_box(env, earlier.Get(i)));
    check_distinct(env, boxes, "mergeRunningStats: this model, the snapshot and each earlier run must be different models");
    LockedAll all(boxes, "mergeRunningStats");
    all.models[0]->merge_running_stats(*all.models[1], std::vector<const mveb::Model*>(all.models.begin() + 2, all.models.end()));
    return env.Undefined();
  });
}

Napi::Value model_zero_grad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Locked m(unwrap_box(env, info[0]));
    m->zero_grad();
    return env.Undefined();
  });
}

// modelNamed(h, which: 'parameters'|'gradients'|'buffers'|'stateDict'|'optimizerState') -> {names, tensors}
Napi::Value model_named(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Locked m(unwrap_box(env, info[0]));
    const std::string which = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    if (which == "parameters") return named_to_js(env, m->parameters());
    if (which == "gradients") return named_to_js(env, m->gradients());
    if (which == "buffers") return named_to_js(env, m->buffers());
    if (which == "stateDict") return named_to_js(env, m->state_dict());
    if (which == "optimizerState") return named_to_js(env, m->optimizer_state());
    throw_js(env, "E_ARG", "unknown tensor set '" + which + "'");
  });
}

// modelLoadStateDict(h, names, tensors, strict)
Napi::Value model_load_state_dict(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr box = unwrap_box(env, info[0]);
    auto named = named_from_js(env, info[1], info[2], "loadStateDict");
    Locked m(box);
    m->load_state_dict(named, info[3].ToBoolean().Value());
    return env.Undefined();
  });
}

Napi::Value model_load_optimizer_state(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr box = unwrap_box(env, info[0]);
    auto named = named_from_js(env, info[1], info[2], "loadOptimizerState");
    Locked m(box);
    m->load_optimizer_state(named);
    return env.Undefined();
  });
}

Napi::Value model_clone(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Locked m(unwrap_box(env, info[0]));
    return wrap_model(env, m->clone(), m.box->device);
  });
}

// modelCopyFrom(dst, src, parameters, buffers): synchronous (one memcpy per arena)
Napi::Value model_copy_from(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr dst = unwrap_box(env, info[0]);
    BoxPtr src = unwrap_box(env, info[1]);
    const bool params = info[2].ToBoolean().Value(), buffers = info[3].ToBoolean().Value();
    if (dst == src) return env.Undefined();
    LockedPair models(dst, src, "copyFrom");
    models.first.copy_from(models.second, params, buffers);
    return env.Undefined();
  });
}

// modelAddGradients(dst, src): dst's gradients += src's; synchronous (one axpy over the gradient arena)
Napi::Value model_add_gradients(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr dst = unwrap_box(env, info[0]);
    BoxPtr src = unwrap_box(env, info[1]);
    if (dst == src) throw_js(env, "E_ARG", "addGradientsFrom: the source is this model");
    LockedPair models(dst, src, "addGradientsFrom");
    models.first.add_gradients(models.second);
    return env.Undefined();
  });
}

// modelEmaUpdate(target, online, m) -> Promise<void>
Napi::Value model_ema_update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr target = unwrap_box(env, info[0]);
    BoxPtr online = unwrap_box(env, info[1]);
    if (target == online) throw_js(env, "E_ARG", "emaUpdate: the target and the online model are the same model");
    if (!info[2].IsNumber()) throw_js(env, "E_ARG", "emaUpdate: momentum must be a number");
    const float mom = static_cast<float>(info[2].As<Napi::Number>().DoubleValue());
    return run_async<bool>(
        env,
        [target, online, mom]() {
          LockedPair models(target, online, "emaUpdate");
          models.first.ema_update(models.second, mom);
          return true;
        },
        [](Napi::Env e, bool&) -> Napi::Value { return e.Undefined(); });
  });
}

// modelOptimizerStep(h, {kind, lr, momentum, weightDecay, trust}) -> Promise<{finite}>
Napi::Value model_optimizer_step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    BoxPtr box = unwrap_box(env, info[0]);
    Napi::Object o = options(env, info[1]);
    mveb::OptimizerOptions opt;
    const std::string kind = get_string(env, o, "kind", "sgd");
    if (kind != "sgd" && kind != "lars") throw_js(env, "E_ARG", "optimizer kind must be 'sgd' or 'lars', found '" + kind + "'");
    opt.lars = kind == "lars";
    opt.lr = static_cast<float>(get_number(env, o, "lr"));
    opt.momentum = static_cast<float>(get_number(env, o, "momentum", 0.9));
    opt.weight_decay = static_cast<float>(get_number(env, o, "weightDecay", 0));
    opt.trust = static_cast<float>(get_number(env, o, "trust", 0.001));
    return run_async<bool>(
        env, [box, opt]() { Locked m(box); return m->optimizer_step(opt); },
        [](Napi::Env e, bool& finite) -> Napi::Value {
          Napi::Object r = Napi::Object::New(e);
          r.Set("finite", finite);
          return r;
        });
  });
}

std::vector<std::pair<std::string, std::string>> metadata_from_js(Napi::Env env, const Napi::Value& v) {
  std::vector<std::pair<std::string, std::string>> out;
  if (v.IsUndefined() || v.IsNull()) return out;
  if (!v.IsObject()) throw_js(env, "E_ARG", "metadata must be an object of strings");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string k = keys.Get(i).ToString().Utf8Value();
    Napi::Value val = o.Get(k);
    if (!val.IsString()) throw_js(env, "E_ARG", "metadata value of '" + k + "' must be a string");
    out.emplace_back(k, val.As<Napi::String>().Utf8Value());
  }
  return out;
}

// safetensorsEncode(names, tensors, metadata) -> Promise<Buffer>
Napi::Value safetensors_encode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto named = named_from_js(env, info[0], info[1], "saveTensors");
    auto meta = metadata_from_js(env, info[2]);
    return run_async<std::vector<uint8_t>>(
        env, [named, meta]() { return mveb::safetensors::write(named, meta); },
        [](Napi::Env e, std::vector<uint8_t>& bytes) -> Napi::Value {
          return Napi::Buffer<uint8_t>::Copy(e, bytes.data(), bytes.size());
        });
  });
}

struct Decoded {
  std::vector<std::pair<std::string, mveb::Tensor>> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
};

// safetensorsDecode(buffer, device) -> Promise<{names, tensors, metadata}>
Napi::Value safetensors_decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsBuffer()) throw_js(env, "E_ARG", "loadTensors: expected a Buffer");
    Napi::Buffer<uint8_t> buf = info[0].As<Napi::Buffer<uint8_t>>();
    auto bytes = std::make_shared<std::vector<uint8_t>>(buf.Data(), buf.Data() + buf.Length());
    const std::string dev = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "cpu";
    mveb::Backend* backend = &runtime(env).backend(parse_device(env, dev));
    return run_async<Decoded>(
        env,
        [bytes, backend]() {
          Decoded d;
          mveb::safetensors::Header h;
          d.tensors = mveb::safetensors::read(*backend, bytes->data(), bytes->size(), &h);
          d.metadata = std::move(h.metadata);
          return d;
        },
        [](Napi::Env e, Decoded& d) -> Napi::Value {
          Napi::Object o = named_to_js(e, d.tensors);
          Napi::Object meta = Napi::Object::New(e);
          for (auto& [k, v] : d.metadata) meta.Set(k, v);
          o.Set("metadata", meta);
          return o;
        });
  });
}

}  // namespace

void register_model(Napi::Env env, Napi::Object exports) {
  exports.Set("modelResnet", Napi::Function::New(env, model_resnet, "modelResnet"));
  exports.Set("modelProjector", Napi::Function::New(env, model_projector, "modelProjector"));
  exports.Set("modelInfo", Napi::Function::New(env, model_info, "modelInfo"));
  exports.Set("modelActivationBytesFor", Napi::Function::New(env, model_activation_bytes_for, "modelActivationBytesFor"));
  exports.Set("modelDispose", Napi::Function::New(env, model_dispose, "modelDispose"));
  exports.Set("modelForward", Napi::Function::New(env, model_forward, "modelForward"));
  exports.Set("modelBackward", Napi::Function::New(env, model_backward, "modelBackward"));
  exports.Set("modelsForward", Napi::Function::New(env, models_forward, "modelsForward"));
  exports.Set("modelsBackward", Napi::Function::New(env, models_backward, "modelsBackward"));
  exports.Set("modelMergeRunningStats", Napi::Function::New(env, model_merge_running_stats, "modelMergeRunningStats"));
  exports.Set("modelZeroGrad", Napi::Function::New(env, model_zero_grad, "modelZeroGrad"));
  exports.Set("modelNamed", Napi::Function::New(env, model_named, "modelNamed"));
  exports.Set("modelLoadStateDict", Napi::Function::New(env, model_load_state_dict, "modelLoadStateDict"));
  exports.Set("modelLoadOptimizerState", Napi::Function::New(env, model_load_optimizer_state, "modelLoadOptimizerState"));
  exports.Set("modelClone", Napi::Function::New(env, model_clone, "modelClone"));
  exports.Set("modelCopyFrom", Napi::Function::New(env, model_copy_from, "modelCopyFrom"));
  exports.Set("modelEmaUpdate", Napi::Function::New(env, model_ema_update, "modelEmaUpdate"));
  exports.Set("modelAddGradients", Napi::Function::New(env, model_add_gradients, "modelAddGradients"));
  exports.Set("modelOptimizerStep", Napi::Function::New(env, model_optimizer_step, "modelOptimizerStep"));
  exports.Set("safetensorsEncode", Napi::Function::New(env, safetensors_encode, "safetensorsEncode"));
  exports.Set("safetensorsDecode", Napi::Function::New(env, safetensors_decode, "safetensorsDecode"));
}

}  // namespace mveb_binding
