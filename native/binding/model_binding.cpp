// model_binding.cpp: N-API functions of the model area (placeholder registration; its owner fills it in).
#include "binding/common.h"

namespace mveb_binding {
void register_model(Napi::Env, Napi::Object) {}
}  // namespace mveb_binding
