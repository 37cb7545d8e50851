// backend.cpp: the op table's defaults (every op throws E_UNSUPPORTED until a backend overrides it),
// and the CUDA factory used when the CUDA backend is not compiled in.
#include "core/backend.h"

#include "core/error.h"

namespace mveb {

void Backend::unsupported(const char* op) const {
  throw_error("E_UNSUPPORTED", "op ", op, " is not implemented on the ", name(), " backend");
}

void Backend::run_concurrently(const std::vector<std::function<void()>>& tasks) {
  for (const auto& t : tasks) t();
}

void Backend::gemm(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) { unsupported("gemm"); }
void Backend::nchw_to_nhwc(float*, const float*, int, int, int, int) { unsupported("nchw_to_nhwc"); }
void Backend::nhwc_to_nchw(float*, const float*, int, int, int, int) { unsupported("nhwc_to_nchw"); }
void Backend::conv2d_forward(float*, const float*, const float*, const ConvShape&) { unsupported("conv2d_forward"); }
void Backend::conv2d_backward_data(float*, const float*, const float*, const ConvShape&) { unsupported("conv2d_backward_data"); }
void Backend::conv2d_backward_weight(float*, const float*, const float*, const ConvShape&) { unsupported("conv2d_backward_weight"); }
void Backend::conv2d_backward_data_add(float* dx, const float* dy, const float* w, const ConvShape& s) {
  const size_t n = static_cast<size_t>(s.N) * s.H * s.W * s.C, bytes = n * sizeof(float);
  float* tmp = static_cast<float*>(allocate(bytes));
  try {
    conv2d_backward_data(tmp, dy, w, s);
    axpy(dx, 1.f, tmp, n);
  } catch (...) {
    deallocate(tmp, bytes);
    throw;
  }
  deallocate(tmp, bytes);
}
void Backend::conv2d_backward(float* dw, float* dx, const float* dy, const float* x, const float* w,
                              const ConvShape& s, bool add) {
  conv2d_backward_weight(dw, dy, x, s);
  if (!dx) return;
  if (add)
    conv2d_backward_data_add(dx, dy, w, s);
  else
    conv2d_backward_data(dx, dy, w, s);
}
void Backend::batchnorm_conv_backward(float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                      const uint8_t* relu_mask, const float* bn_x, const float* gamma,
                                      const float* mean, const float* invstd, bool relu, bool train, float* dw,
                                      float* dx, const float* x, const float* w, const ConvShape& s, bool add,
                                      float* scratch) {
  batchnorm_backward(scratch, dresidual, dgamma, dbeta, dy, relu_mask, bn_x, gamma, mean, invstd, relu, train,
                     s.N * s.P() * s.Q(), s.K);
  conv2d_backward(dw, dx, scratch, x, w, s, add);
}
bool Backend::conv2d_forward_stats(float* y, double*, const float* x, const float* w, const ConvShape& s) {
  conv2d_forward(y, x, w, s);
  return false;
}
void Backend::batchnorm_forward_train(float*, uint8_t*, float*, float*, float*, float*, const float*, const float*,
                                      const float*, const float*, bool, int, int, float, float, const double*) {
  unsupported("batchnorm_forward_train");
}
void Backend::batchnorm_forward_eval(float*, uint8_t*, const float*, const float*, const float*, const float*,
                                     const float*, const float*, bool, int, int, float) {
  unsupported("batchnorm_forward_eval");
}
void Backend::batchnorm_backward(float*, float*, float*, float*, const float*, const uint8_t*, const float*,
                                 const float*, const float*, const float*, bool, bool, int, int) {
  unsupported("batchnorm_backward");
}
void Backend::relu_forward(float*, const float*, size_t) { unsupported("relu_forward"); }
void Backend::relu_backward(float*, const float*, const float*, size_t) { unsupported("relu_backward"); }
void Backend::add(float*, const float*, const float*, size_t) { unsupported("add"); }
void Backend::axpy(float*, float, const float*, size_t) { unsupported("axpy"); }
void Backend::maxpool2d_forward(float*, int32_t*, const float*, const PoolShape&) { unsupported("maxpool2d_forward"); }
void Backend::maxpool2d_backward(float*, const float*, const int32_t*, const PoolShape&) { unsupported("maxpool2d_backward"); }
void Backend::global_avgpool_forward(float*, const float*, int, int, int) { unsupported("global_avgpool_forward"); }
void Backend::global_avgpool_backward(float*, const float*, int, int, int) { unsupported("global_avgpool_backward"); }
void Backend::add_bias_rows(float*, const float*, int, int) { unsupported("add_bias_rows"); }
void Backend::sum_rows(float*, const float*, int, int) { unsupported("sum_rows"); }
void Backend::sgd_step(float*, float*, const float*, size_t, float, float, float) { unsupported("sgd_step"); }
void Backend::lars_step(float*, float*, const float*, size_t, float, float, float, float, bool) { unsupported("lars_step"); }
void Backend::lars_step_tensors(float* param, float* momentum_buffer, const float* grad,
                                const std::vector<LarsTensor>& tensors, float lr, float momentum, float weight_decay,
                                float trust) {
  for (const LarsTensor& t : tensors)
    lars_step(param + t.offset, momentum_buffer + t.offset, grad + t.offset, t.numel, lr, momentum,
              t.adapt ? weight_decay : 0.f, trust, t.adapt);
}
void Backend::ema_update(float*, const float*, size_t, float) { unsupported("ema_update"); }
bool Backend::all_finite(const float*, size_t) { unsupported("all_finite"); }
double Backend::sum_squares(const float*, size_t) { unsupported("sum_squares"); }
void Backend::l2_normalize_rows_forward(float*, float*, const float*, int, int, float) { unsupported("l2_normalize_rows_forward"); }
void Backend::l2_normalize_rows_backward(float*, const float*, const float*, const float*, int, int, float) {
  unsupported("l2_normalize_rows_backward");
}
VmfInfo Backend::vmf_score(float*, const float*, int, int, float, float) { unsupported("vmf_score"); }

#ifndef MVEB_WITH_CUDA
Backend* cuda_backend_create(std::string* reason) {
#ifdef MVEB_CUDA_REASON
  *reason = "not compiled: " MVEB_CUDA_REASON;
#else
  *reason = "not compiled: the addon was built without the CUDA backend";
#endif
  return nullptr;
}
CudaInfo cuda_query_info() {
  CudaInfo info;
  cuda_backend_create(&info.reason);
  return info;
}
#endif

}  // namespace mveb
