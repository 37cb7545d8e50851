// loss_binding.cpp: N-API functions of the loss area (thin: unwrap, run core/mveb_loss.h off the JS
// thread, convert). Used by lib/loss.ts; tested by test/loss.test.ts.
//   mvebLossForward(online: handle[], targets: handle[], opts {lambda, eta, minWidth, groupSize, eps})
//     -> Promise<{ loss, alignment, entropy, surrogates[], groups, widths[], widthsRaw[], conditions[],
//                  grads: handle[] }>      (widths etc. per view and group, index v * groups + g)
//   vmfScore(z: handle, opts {eta, minWidth}) -> Promise<{ score: handle, width, widthRaw, condition }>
#include "binding/common.h"
#include "core/mveb_loss.h"

namespace mveb_binding {

namespace {

Napi::Object options_object(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined() || info[index].IsNull())
    return Napi::Object::New(info.Env());
  if (!info[index].IsObject()) throw_js(info.Env(), "E_ARG", "options must be an object");
  return info[index].As<Napi::Object>();
}

Napi::Array number_array(Napi::Env env, const std::vector<double>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, v[i]));
  return a;
}

Napi::Value mveb_loss_forward_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::vector<mveb::Tensor> online = unwrap_tensor_array(env, info[0], "MVEBLoss.forward: online");
    std::vector<mveb::Tensor> targets = unwrap_tensor_array(env, info[1], "MVEBLoss.forward: targets");
    Napi::Object o = options_object(info, 2);
    mveb::MvebLossOptions opts;
    opts.lambda = get_number(env, o, "lambda", opts.lambda);
    opts.eta = static_cast<float>(get_number(env, o, "eta", opts.eta));
    opts.min_width = static_cast<float>(get_number(env, o, "minWidth", opts.min_width));
    opts.group_size = static_cast<int>(get_number(env, o, "groupSize", 0));
    opts.eps = static_cast<float>(get_number(env, o, "eps", opts.eps));
    return run_async<mveb::MvebLossResult>(
        env, [online, targets, opts]() { return mveb::mveb_loss_forward(online, targets, opts); },
        [](Napi::Env env, mveb::MvebLossResult& r) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("loss", r.loss);
          out.Set("alignment", r.alignment);
          out.Set("entropy", r.entropy);
          out.Set("surrogates", number_array(env, r.surrogates));
          out.Set("groups", r.groups);
          std::vector<double> widths, raw, conditions;
          for (const mveb::VmfInfo& e : r.estimates) {
            widths.push_back(e.width);
            raw.push_back(e.width_raw);
            conditions.push_back(e.condition);
          }
          out.Set("widths", number_array(env, widths));
          out.Set("widthsRaw", number_array(env, raw));
          out.Set("conditions", number_array(env, conditions));
          Napi::Array grads = Napi::Array::New(env, r.grads.size());
          for (size_t i = 0; i < r.grads.size(); ++i) grads.Set(static_cast<uint32_t>(i), wrap_tensor(env, r.grads[i]));
          out.Set("grads", grads);
          return out;
        });
  });
}

Napi::Value vmf_score_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Tensor z = unwrap_tensor(env, info[0], "vmfScore: z");
    Napi::Object o = options_object(info, 1);
    const float eta = static_cast<float>(get_number(env, o, "eta", 0.01));
    const float min_width = static_cast<float>(get_number(env, o, "minWidth", 0.1));
    return run_async<mveb::VmfScoreResult>(
        env, [z, eta, min_width]() { return mveb::vmf_score_tensor(z, eta, min_width); },
        [](Napi::Env env, mveb::VmfScoreResult& r) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("score", wrap_tensor(env, r.score));
          out.Set("width", r.info.width);
          out.Set("widthRaw", r.info.width_raw);
          out.Set("condition", r.info.condition);
          return out;
        });
  });
}

}  // namespace

void register_loss(Napi::Env env, Napi::Object exports) {
  exports.Set("mvebLossForward", Napi::Function::New(env, mveb_loss_forward_js, "mvebLossForward"));
  exports.Set("vmfScore", Napi::Function::New(env, vmf_score_js, "vmfScore"));
}

}  // namespace mveb_binding
