// loss_binding.cpp: N-API functions of the loss area (placeholder registration; its owner fills it in).
#include "binding/common.h"

namespace mveb_binding {
void register_loss(Napi::Env, Napi::Object) {}
}  // namespace mveb_binding
