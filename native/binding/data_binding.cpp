// data_binding.cpp: N-API functions of the data area (placeholder registration; its owner fills it in).
#include "binding/common.h"

namespace mveb_binding {
void register_data(Napi::Env, Napi::Object) {}
}  // namespace mveb_binding
