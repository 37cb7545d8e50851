// addon.cpp: the N-API module entry. Creates this environment's AddonData (Runtime, MvebError class,
// TensorHandle constructor), implements the shared helpers declared in common.h, and calls each
// area's register_* function. Loaded by lib/native.ts; test with `npm test`.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "binding/common.h"

namespace mveb_binding {

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  AddonData& d = addon_data(env);
  Napi::Object err;
  if (!d.error_class.IsEmpty()) {
    err = d.error_class.New({Napi::String::New(env, code), Napi::String::New(env, message)});
  } else {
    err = Napi::Error::New(env, message).Value();
    err.Set("name", "MvebError");
  }
  err.Set("code", Napi::String::New(env, code));
  return Napi::Error(env, err);
}

void throw_js(Napi::Env env, const std::string& code, const std::string& message) {
  throw make_error(env, code, message);
}

Napi::Value guard(Napi::Env env, const std::function<Napi::Value()>& fn) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const mveb::Error& e) {
    throw make_error(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw make_error(env, "E_MEMORY", "out of memory");
  } catch (const std::exception& e) {
    throw make_error(env, "E_INTERNAL", e.what());
  }
}

std::string number_string(double x) {
  char buf[32];
  // the shortest of %.15g .. %.17g that reads back as x
  for (int p = 15; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

double get_number(Napi::Env env, const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw_js(env, "E_ARG", std::string("option '") + key + "' must be a number");
  double x = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x)) throw_js(env, "E_ARG", std::string("option '") + key + "' must be finite");
  return x;
}

double get_number(Napi::Env env, const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw_js(env, "E_ARG", std::string("option '") + key + "' is required and must be a number");
  return get_number(env, o, key, 0);
}

bool get_bool(Napi::Env env, const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsBoolean()) throw_js(env, "E_ARG", std::string("option '") + key + "' must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string get_string(Napi::Env env, const Napi::Object& o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsString()) throw_js(env, "E_ARG", std::string("option '") + key + "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

mveb::Device parse_device(Napi::Env env, const std::string& s) {
  if (s == "cpu") return mveb::Device::CPU;
  if (s == "cuda") return mveb::Device::CUDA;
  throw_js(env, "E_DEVICE", "unknown device '" + s + "': expected 'cpu' or 'cuda'");
}

static Napi::Value set_error_class(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "setErrorClass expects a constructor");
  addon_data(env).error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

static void release_addon_data(Napi::Env, AddonData* d) {
  bool busy = d->runtime->cpu().memory().buffers != 0;
  std::string reason;
  if (mveb::Backend* cuda = d->runtime->try_cuda(&reason)) busy = busy || cuda->memory().buffers != 0;
  d->error_class.Reset();
  d->tensor_handle.Reset();
  if (!busy) delete d;
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->runtime = std::make_unique<mveb::Runtime>();
  // At environment teardown, tensors still referenced from JS may be finalised after this data; a
  // runtime whose backends still own buffers is therefore left to the process exit, never freed early.
  env.SetInstanceData<AddonData, release_addon_data>(data);
  exports.Set("setErrorClass", Napi::Function::New(env, set_error_class, "setErrorClass"));
  register_tensor(env, exports);
  register_model(env, exports);
  register_loss(env, exports);
  register_data(env, exports);
  register_eval(env, exports);
  return exports;
}

}  // namespace mveb_binding

static Napi::Object module_init(Napi::Env env, Napi::Object exports) { return mveb_binding::init(env, exports); }
NODE_API_MODULE(mveb, module_init)
