// data_binding.cpp: N-API functions of the data pipeline (native/data). Thin: argument checks, then
// the work on a libuv worker, which fans out over the dataset's own threads.
//   dataCreate(bytes: Uint8Array, n, h, w, c, threads) -> handle   (copies the bytes once)
//   dataDispose(handle)                                             (frees the bytes and the threads)
//   dataAugmentBatch(handle, indices: Int32Array, views: object[], seed, step, device) -> Promise<TensorHandle[]>
//   dataEvalBatch(handle, indices: Int32Array, size, mean: number[], std: number[], device) -> Promise<TensorHandle>
//   dataPermutation(n, seed, epoch) -> Int32Array
// Output tensors are allocated here on the JS thread (the memory counters are not atomic), filled on
// the worker, and uploaded to CUDA on the JS thread when device is 'cuda'.
// Tested by test/data.test.ts (lib/data) and, for the kernels, test/native/test_augment.cpp.
#include <cmath>
#include <cstring>

#include "binding/common.h"
#include "data/augment.h"

namespace mveb_binding {

namespace {

// Tag that marks a JS external as one of our dataset handles (a const, not mutable state).
const napi_type_tag kDatasetTag = {0x6d7665622d646174ull, 0x617365742d763031ull};

struct DatasetHolder {
  std::shared_ptr<mveb::data::ImageDataset> dataset;
};

std::shared_ptr<mveb::data::ImageDataset> unwrap_dataset(Napi::Env env, const Napi::Value& v) {
  if (!v.IsExternal()) throw_js(env, "E_ARG", "expected a dataset handle (from dataCreate)");
  auto ext = v.As<Napi::External<DatasetHolder>>();
  if (!ext.CheckTypeTag(&kDatasetTag)) throw_js(env, "E_ARG", "expected a dataset handle (from dataCreate)");
  DatasetHolder* holder = ext.Data();
  if (!holder->dataset) throw_js(env, "E_DISPOSED", "the dataset handle was disposed");
  return holder->dataset;
}

uint64_t get_u64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw_js(env, "E_ARG", std::string(what) + " must be a number");
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!(x >= 0 && x <= 9007199254740991.0 && std::floor(x) == x))
    throw_js(env, "E_ARG", std::string(what) + " must be an integer in [0, 2^53), found " + number_string(x));
  return static_cast<uint64_t>(x);
}

int get_int(Napi::Env env, const Napi::Value& v, const char* what, int lo, int hi) {
  if (!v.IsNumber()) throw_js(env, "E_ARG", std::string(what) + " must be a number");
  const double x = v.As<Napi::Number>().DoubleValue();
  if (!(x >= lo && x <= hi && std::floor(x) == x))
    throw_js(env, "E_ARG", std::string(what) + " must be an integer in [" + std::to_string(lo) + ", " +
                               std::to_string(hi) + "], found " + number_string(x));
  return static_cast<int>(x);
}

std::vector<int32_t> get_indices(Napi::Env env, const Napi::Value& v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_js(env, "E_ARG", "indices must be an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

std::vector<float> get_floats(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw_js(env, "E_ARG", std::string(what) + " must be an array of numbers");
  auto a = v.As<Napi::Array>();
  std::vector<float> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value x = a.Get(i);
    if (!x.IsNumber()) throw_js(env, "E_ARG", std::string(what) + " must be an array of numbers");
    out[i] = static_cast<float>(x.As<Napi::Number>().DoubleValue());
  }
  return out;
}

void get_range(Napi::Env env, const Napi::Object& o, const char* key, double& lo, double& hi) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return;
  std::vector<float> r = get_floats(env, v, key);
  if (r.size() != 2) throw_js(env, "E_ARG", std::string("'") + key + "' must be [lo, hi]");
  Napi::Array a = v.As<Napi::Array>();  // keep double precision of the JS numbers
  lo = a.Get(0u).As<Napi::Number>().DoubleValue();
  hi = a.Get(1u).As<Napi::Number>().DoubleValue();
}

mveb::data::ViewConfig parse_view(Napi::Env env, const Napi::Value& value) {
  if (!value.IsObject()) throw_js(env, "E_ARG", "each view must be an object");
  Napi::Object o = value.As<Napi::Object>();
  mveb::data::ViewConfig v;
  v.size = get_int(env, o.Get("size"), "view size", 1, 8192);
  get_range(env, o, "scale", v.scale_lo, v.scale_hi);
  get_range(env, o, "ratio", v.ratio_lo, v.ratio_hi);
  get_range(env, o, "blurSigma", v.blur_sigma_lo, v.blur_sigma_hi);
  v.flip_p = get_number(env, o, "flipP", v.flip_p);
  v.jitter_p = get_number(env, o, "jitterP", v.jitter_p);
  v.brightness = get_number(env, o, "brightness", v.brightness);
  v.contrast = get_number(env, o, "contrast", v.contrast);
  v.saturation = get_number(env, o, "saturation", v.saturation);
  v.hue = get_number(env, o, "hue", v.hue);
  v.grayscale_p = get_number(env, o, "grayscaleP", v.grayscale_p);
  v.blur_p = get_number(env, o, "blurP", v.blur_p);
  v.solarize_p = get_number(env, o, "solarizeP", v.solarize_p);
  v.mean = get_floats(env, o.Get("mean"), "view mean");
  v.std = get_floats(env, o.Get("std"), "view std");
  return v;
}

// Copies finished host tensors to CUDA when asked (on the JS thread).
mveb::Tensor to_device(Napi::Env env, const mveb::Tensor& host, mveb::Device device) {
  if (device == mveb::Device::CPU) return host;
  mveb::Backend& cuda = runtime(env).cuda();
  mveb::Tensor t = mveb::empty_tensor(cuda, host.shape);
  cuda.upload(t.storage->data, host.storage->data, host.bytes());
  cuda.synchronize();
  return t;
}

Napi::Value data_create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw_js(env, "E_ARG", "dataCreate: images must be a Uint8Array");
    auto bytes = info[0].As<Napi::Uint8Array>();
    const double n = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    if (!(n >= 1 && n <= 2147483647.0 && std::floor(n) == n))
      throw_js(env, "E_ARG", "dataCreate: n must be a positive integer below 2^31");
    const int h = get_int(env, info[2], "height", 1, 65536), w = get_int(env, info[3], "width", 1, 65536);
    const int c = get_int(env, info[4], "channels", 1, 4);
    const int threads = info[5].IsUndefined() ? 0 : get_int(env, info[5], "threads", 0, 1024);
    const double expected = n * h * w * c;
    if (static_cast<double>(bytes.ByteLength()) != expected)
      throw_js(env, "E_SHAPE", "dataCreate: expected " + std::to_string(static_cast<int64_t>(expected)) +
                                   " bytes (N*H*W*C), found " + std::to_string(bytes.ByteLength()));
    auto* holder = new DatasetHolder();
    try {
      holder->dataset = std::make_shared<mveb::data::ImageDataset>(bytes.Data(), static_cast<int64_t>(n), h, w, c, threads);
    } catch (...) {
      delete holder;
      throw;
    }
    auto ext = Napi::External<DatasetHolder>::New(env, holder, [](Napi::Env, DatasetHolder* p) { delete p; });
    ext.TypeTag(&kDatasetTag);
    return ext;
  });
}

Napi::Value data_dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsExternal()) throw_js(env, "E_ARG", "expected a dataset handle (from dataCreate)");
    auto ext = info[0].As<Napi::External<DatasetHolder>>();
    if (!ext.CheckTypeTag(&kDatasetTag)) throw_js(env, "E_ARG", "expected a dataset handle (from dataCreate)");
    ext.Data()->dataset.reset();  // a batch in flight keeps its own reference until it finishes
    return env.Undefined();
  });
}

Napi::Value data_augment_batch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto dataset = unwrap_dataset(env, info[0]);
    auto indices = std::make_shared<std::vector<int32_t>>(get_indices(env, info[1]));
    if (!info[2].IsArray() || info[2].As<Napi::Array>().Length() == 0)
      throw_js(env, "E_ARG", "views must be a non-empty array of view configs");
    Napi::Array arr = info[2].As<Napi::Array>();
    auto views = std::make_shared<std::vector<mveb::data::ViewConfig>>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      views->push_back(parse_view(env, arr.Get(i)));
      mveb::data::validate_view(views->back(), dataset->channels(), ("view " + std::to_string(i)).c_str());
    }
    const uint64_t seed = get_u64(env, info[3], "seed"), step = get_u64(env, info[4], "step");
    const mveb::Device device = parse_device(env, info[5].IsString() ? info[5].As<Napi::String>().Utf8Value() : "cpu");
    if (indices->empty()) throw_js(env, "E_ARG", "indices must not be empty");
    if (device == mveb::Device::CUDA) runtime(env).cuda();  // E_DEVICE now, with the reason, when CUDA is unusable
    const int64_t batch = static_cast<int64_t>(indices->size());
    std::vector<mveb::Tensor> outs;
    for (const auto& v : *views)
      outs.push_back(mveb::empty_tensor(runtime(env).cpu(), {batch, dataset->channels(), v.size, v.size}));
    return run_async<std::vector<mveb::Tensor>>(
        env,
        [dataset, indices, views, seed, step, outs]() {
          std::vector<float*> ptrs;
          for (const auto& t : outs) ptrs.push_back(t.f32());
          dataset->augment_batch(indices->data(), static_cast<int64_t>(indices->size()), *views, seed, step, ptrs);
          return outs;
        },
        [device](Napi::Env env, std::vector<mveb::Tensor>& result) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, result.size());
          for (size_t i = 0; i < result.size(); ++i)
            out.Set(static_cast<uint32_t>(i), wrap_tensor(env, to_device(env, result[i], device)));
          return out;
        });
  });
}

Napi::Value data_eval_batch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto dataset = unwrap_dataset(env, info[0]);
    auto indices = std::make_shared<std::vector<int32_t>>(get_indices(env, info[1]));
    if (indices->empty()) throw_js(env, "E_ARG", "indices must not be empty");
    const int size = get_int(env, info[2], "size", 1, 8192);
    auto mean = std::make_shared<std::vector<float>>(get_floats(env, info[3], "mean"));
    auto stdv = std::make_shared<std::vector<float>>(get_floats(env, info[4], "std"));
    if (static_cast<int>(mean->size()) != dataset->channels() || static_cast<int>(stdv->size()) != dataset->channels())
      throw_js(env, "E_ARG", "mean and std must have one value per channel (" + std::to_string(dataset->channels()) +
                                 "), found " + std::to_string(mean->size()) + " and " + std::to_string(stdv->size()));
    const mveb::Device device = parse_device(env, info[5].IsString() ? info[5].As<Napi::String>().Utf8Value() : "cpu");
    if (device == mveb::Device::CUDA) runtime(env).cuda();
    const int64_t batch = static_cast<int64_t>(indices->size());
    mveb::Tensor out = mveb::empty_tensor(runtime(env).cpu(), {batch, dataset->channels(), size, size});
    return run_async<mveb::Tensor>(
        env,
        [dataset, indices, size, mean, stdv, out]() {
          dataset->eval_batch(indices->data(), static_cast<int64_t>(indices->size()), size, *mean, *stdv, out.f32());
          return out;
        },
        [device](Napi::Env env, mveb::Tensor& result) -> Napi::Value {
          return wrap_tensor(env, to_device(env, result, device));
        });
  });
}

Napi::Value data_permutation(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const double n = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    if (!(n >= 0 && n <= 2147483647.0 && std::floor(n) == n))
      throw_js(env, "E_ARG", "permutation: n must be a non-negative integer below 2^31");
    const uint64_t seed = get_u64(env, info[1], "seed"), epoch = get_u64(env, info[2], "epoch");
    Napi::Int32Array out = Napi::Int32Array::New(env, static_cast<size_t>(n));
    mveb::data::permutation(out.Data(), static_cast<int64_t>(n), seed, epoch);
    return out;
  });
}

}  // namespace

void register_data(Napi::Env env, Napi::Object exports) {
  exports.Set("dataCreate", Napi::Function::New(env, data_create, "dataCreate"));
  exports.Set("dataDispose", Napi::Function::New(env, data_dispose, "dataDispose"));
  exports.Set("dataAugmentBatch", Napi::Function::New(env, data_augment_batch, "dataAugmentBatch"));
  exports.Set("dataEvalBatch", Napi::Function::New(env, data_eval_batch, "dataEvalBatch"));
  exports.Set("dataPermutation", Napi::Function::New(env, data_permutation, "dataPermutation"));
}

}  // namespace mveb_binding
