// common.h: what every binding file shares. The binding is thin: it unwraps arguments, checks them,
// runs compute on a libuv worker (run_async) and converts results. Conventions:
//   - Per-environment state (the Runtime, the MvebError class, the TensorHandle constructor) lives in
//     AddonData, reached through addon_data(env); no static mutable state anywhere in the addon.
//   - Errors: C++ code throws mveb::Error(code, message); run_async and guard() turn it into a JS
//     MvebError with that `code` (constructed from the class the TS layer registers at load time).
//   - Tensors cross the boundary as TensorHandle objects (an ObjectWrap holding an mveb::Tensor);
//     lib/tensor.ts wraps each handle in the public Tensor class.
//   - Each area registers its functions from its own file: register_tensor (tensor_binding.cpp),
//     register_model (model_binding.cpp), register_loss (loss_binding.cpp), register_data
//     (data_binding.cpp), register_eval (eval_binding.cpp). addon.cpp calls them all.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/runtime.h"
#include "core/tensor.h"

namespace mveb_binding {

struct AddonData {
  std::unique_ptr<mveb::Runtime> runtime;
  Napi::FunctionReference error_class;     // MvebError from lib/errors.ts (set by setErrorClass)
  Napi::FunctionReference tensor_handle;   // TensorHandle constructor
};
AddonData& addon_data(Napi::Env env);
inline mveb::Runtime& runtime(Napi::Env env) { return *addon_data(env).runtime; }

// A JS MvebError with .code, ready to throw or to reject with.
Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message);
[[noreturn]] void throw_js(Napi::Env env, const std::string& code, const std::string& message);

// Runs fn and converts an mveb::Error / std::exception escaping it into a JS MvebError.
// Use around every synchronous native call: `return guard(env, [&] { ... return value; });`
Napi::Value guard(Napi::Env env, const std::function<Napi::Value()>& fn);

// ---- tensors ----
class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit TensorHandle(const Napi::CallbackInfo& info);
  ~TensorHandle() override;
  mveb::Tensor tensor;
  bool disposed = false;
 private:
  Napi::Value dispose(const Napi::CallbackInfo& info);
  Napi::Value is_disposed(const Napi::CallbackInfo& info);
};
// Wrap a native tensor into a new TensorHandle JS object.
Napi::Object wrap_tensor(Napi::Env env, mveb::Tensor t);
// The tensor behind a TensorHandle argument; throws E_ARG (not a tensor) / E_DISPOSED (used after dispose).
mveb::Tensor unwrap_tensor(Napi::Env env, const Napi::Value& v, const char* what);
std::vector<mveb::Tensor> unwrap_tensor_array(Napi::Env env, const Napi::Value& v, const char* what);

// ---- small argument helpers (throw E_ARG with the argument's name) ----
// A number as a JS user wrote it, for messages: 100000, 0.5, 1e+300 (std::to_string gave "100000.000000").
std::string number_string(double x);
double get_number(Napi::Env env, const Napi::Object& o, const char* key, double fallback);
double get_number(Napi::Env env, const Napi::Object& o, const char* key);  // required
bool get_bool(Napi::Env env, const Napi::Object& o, const char* key, bool fallback);
std::string get_string(Napi::Env env, const Napi::Object& o, const char* key, const std::string& fallback);
mveb::Device parse_device(Napi::Env env, const std::string& s);
// A JS array of non-negative integers (E_SHAPE otherwise).
mveb::Shape parse_shape(Napi::Env env, const Napi::Value& v);

// ---- async work ----
// Runs compute() on a libuv worker thread; then finish(env, result) on the JS thread resolves the
// returned Promise. An exception from compute or finish rejects it with an MvebError.
// Everything compute touches must be owned by the lambda (copy mveb::Tensor values in: they hold
// their storage alive even if the JS side disposes the handle meanwhile).
template <typename Result>
Napi::Promise run_async(Napi::Env env, std::function<Result()> compute,
                        std::function<Napi::Value(Napi::Env, Result&)> finish);

// ---- registration (one per binding file) ----
void register_tensor(Napi::Env env, Napi::Object exports);
void register_model(Napi::Env env, Napi::Object exports);
void register_loss(Napi::Env env, Napi::Object exports);
void register_data(Napi::Env env, Napi::Object exports);
void register_eval(Napi::Env env, Napi::Object exports);

// ---------------------------------------------------------------------------------------------
// run_async implementation
template <typename Result>
class AsyncJob : public Napi::AsyncWorker {
 public:
  AsyncJob(Napi::Env env, std::function<Result()> compute, std::function<Napi::Value(Napi::Env, Result&)> finish)
      : Napi::AsyncWorker(env, "mveb"), deferred_(Napi::Promise::Deferred::New(env)),
        compute_(std::move(compute)), finish_(std::move(finish)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      result_ = std::make_unique<Result>(compute_());
    } catch (const mveb::Error& e) {
      code_ = e.code();
      message_ = e.what();
    } catch (const std::exception& e) {
      code_ = "E_INTERNAL";
      message_ = e.what();
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!code_.empty()) {
      deferred_.Reject(make_error(env, code_, message_).Value());
      return;
    }
    try {
      deferred_.Resolve(finish_(env, *result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const mveb::Error& e) {
      deferred_.Reject(make_error(env, e.code(), e.what()).Value());
    } catch (const std::exception& e) {
      deferred_.Reject(make_error(env, "E_INTERNAL", e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<Result()> compute_;
  std::function<Napi::Value(Napi::Env, Result&)> finish_;
  std::unique_ptr<Result> result_;
  std::string code_, message_;
};

template <typename Result>
Napi::Promise run_async(Napi::Env env, std::function<Result()> compute,
                        std::function<Napi::Value(Napi::Env, Result&)> finish) {
  auto* job = new AsyncJob<Result>(env, std::move(compute), std::move(finish));
  Napi::Promise p = job->promise();
  job->Queue();
  return p;
}

}  // namespace mveb_binding
