// tensor_binding.cpp: TensorHandle (the native side of lib/tensor.ts's Tensor), tensor creation and
// copies, memory(), backends() and the CPU matmul precision (set/getMatmulPrecision). Checks every
// argument so bad input never crashes the process.
#include <cstring>

#include "binding/common.h"
#include "core/backend.h"
#include "core/random.h"
#include "cpu/cpu_backend.h"

namespace mveb_binding {

// ---- TensorHandle ----
Napi::Function TensorHandle::define(Napi::Env env) {
  return DefineClass(env, "TensorHandle",
                     {InstanceMethod("dispose", &TensorHandle::dispose), InstanceAccessor("disposed", &TensorHandle::is_disposed, nullptr)});
}
TensorHandle::TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {}
TensorHandle::~TensorHandle() = default;
Napi::Value TensorHandle::dispose(const Napi::CallbackInfo& info) {
  tensor = mveb::Tensor();
  disposed = true;
  return info.Env().Undefined();
}
Napi::Value TensorHandle::is_disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed); }

Napi::Object wrap_tensor(Napi::Env env, mveb::Tensor t) {
  Napi::Object obj = addon_data(env).tensor_handle.New({});
  TensorHandle::Unwrap(obj)->tensor = std::move(t);
  return obj;
}

mveb::Tensor unwrap_tensor(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addon_data(env).tensor_handle.Value()))
    throw_js(env, "E_ARG", std::string(what) + ": expected a Tensor");
  TensorHandle* h = TensorHandle::Unwrap(v.As<Napi::Object>());
  if (h->disposed) throw_js(env, "E_DISPOSED", std::string(what) + ": tensor was used after dispose()");
  return h->tensor;
}

std::vector<mveb::Tensor> unwrap_tensor_array(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw_js(env, "E_ARG", std::string(what) + ": expected an array of Tensors");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<mveb::Tensor> out;
  for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(unwrap_tensor(env, a.Get(i), what));
  return out;
}

// ---- argument parsing ----
mveb::Shape parse_shape(Napi::Env env, const Napi::Value& v) {
  if (!v.IsArray()) throw_js(env, "E_SHAPE", "shape must be an array of non-negative integers");
  Napi::Array a = v.As<Napi::Array>();
  mveb::Shape s;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value d = a.Get(i);
    double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
    // (the bound first: converting a double past 2^63 to int64 is undefined)
    if (!(x >= 0) || x > 9.0e15 || x != static_cast<double>(static_cast<int64_t>(x)))
      throw_js(env, "E_SHAPE", "shape must contain non-negative integers up to 9e15, found " + d.ToString().Utf8Value() +
                                   " at dimension " + std::to_string(i));
    s.push_back(static_cast<int64_t>(x));
  }
  return s;
}
static mveb::DType parse_dtype(Napi::Env env, const Napi::Value& v) {
  std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "float32") return mveb::DType::Float32;
  if (s == "int32") return mveb::DType::Int32;
  throw_js(env, "E_DTYPE", "unknown dtype '" + s + "': expected 'float32' or 'int32'");
}
static mveb::Backend& backend_for(Napi::Env env, const Napi::Value& v) {
  std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  return runtime(env).backend(parse_device(env, s));
}

// tensorFrom(data: Float32Array|Int32Array, shape, dtype, device) -> handle
static Napi::Value tensor_from(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Shape shape = parse_shape(env, info[1]);
    mveb::DType dtype = parse_dtype(env, info[2]);
    if (!info[0].IsTypedArray()) throw_js(env, "E_ARG", "data must be a Float32Array or Int32Array");
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    bool ok = (dtype == mveb::DType::Float32 && ta.TypedArrayType() == napi_float32_array) ||
              (dtype == mveb::DType::Int32 && ta.TypedArrayType() == napi_int32_array);
    if (!ok) throw_js(env, "E_DTYPE", std::string("data array does not match dtype ") + mveb::dtype_name(dtype));
    const int64_t numel = mveb::shape_numel(shape);
    if (static_cast<int64_t>(ta.ElementLength()) != numel)
      throw_js(env, "E_SHAPE", "data has " + std::to_string(ta.ElementLength()) + " elements but shape " + mveb::shape_string(shape) + " needs " + std::to_string(numel));
    mveb::Backend& be = backend_for(env, info[3]);
    mveb::Tensor t = mveb::empty_tensor(be, shape, dtype);
    const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    be.upload(t.storage->data, src, t.bytes());
    return wrap_tensor(env, std::move(t));
  });
}

// tensorZeros(shape, dtype, device) -> handle
static Napi::Value tensor_zeros(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Shape shape = parse_shape(env, info[0]);
    mveb::DType dtype = parse_dtype(env, info[1]);
    mveb::Backend& be = backend_for(env, info[2]);
    mveb::Tensor t = mveb::empty_tensor(be, shape, dtype);
    be.fill(t.f32(), 0.0f, static_cast<size_t>(t.numel()));  // 0.0f and int 0 share the bit pattern
    return wrap_tensor(env, std::move(t));
  });
}

// tensorRandn(shape, seed, device) -> handle: element i is normal01(seed, i), identical on every machine.
static Napi::Value tensor_randn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Shape shape = parse_shape(env, info[0]);
    if (!info[1].IsNumber()) throw_js(env, "E_ARG", "seed must be a number");
    uint64_t seed = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    mveb::Backend& be = backend_for(env, info[2]);
    std::vector<float> host(static_cast<size_t>(mveb::shape_numel(shape)));
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(mveb::normal01(seed, i));
    mveb::Tensor t = mveb::empty_tensor(be, shape, mveb::DType::Float32);
    be.upload(t.storage->data, host.data(), t.bytes());
    return wrap_tensor(env, std::move(t));
  });
}

static Napi::Value to_typed_array(Napi::Env env, const mveb::Tensor& t, const std::vector<uint8_t>& bytes) {
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, bytes.size());
  if (!bytes.empty()) std::memcpy(buf.Data(), bytes.data(), bytes.size());
  size_t n = static_cast<size_t>(t.numel());
  if (t.dtype == mveb::DType::Float32) return Napi::Float32Array::New(env, n, buf, 0);
  return Napi::Int32Array::New(env, n, buf, 0);
}

// tensorReadSync(handle) -> TypedArray copy
static Napi::Value tensor_read_sync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Tensor t = unwrap_tensor(env, info[0], "dataSync");
    std::vector<uint8_t> bytes(t.bytes());
    t.backend().download(bytes.data(), t.storage->data, bytes.size());
    return to_typed_array(env, t, bytes);
  });
}

// tensorRead(handle) -> Promise<TypedArray>; the download runs off the JS thread.
static Napi::Value tensor_read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Tensor t = unwrap_tensor(env, info[0], "data");
    return run_async<std::vector<uint8_t>>(
        env,
        [t]() {
          std::vector<uint8_t> bytes(t.bytes());
          t.backend().download(bytes.data(), t.storage->data, bytes.size());
          return bytes;
        },
        [t](Napi::Env e, std::vector<uint8_t>& bytes) { return to_typed_array(e, t, bytes); });
  });
}

// tensorTo(handle, device) -> handle (a copy; the same device gives a copy too)
static Napi::Value tensor_to(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Tensor t = unwrap_tensor(env, info[0], "to");
    mveb::Backend& dst = backend_for(env, info[1]);
    mveb::Tensor out = mveb::empty_tensor(dst, t.shape, t.dtype);
    if (&dst == &t.backend()) {
      dst.copy(out.storage->data, t.storage->data, t.bytes());
    } else {
      std::vector<uint8_t> host(t.bytes());
      t.backend().download(host.data(), t.storage->data, host.size());
      dst.upload(out.storage->data, host.data(), host.size());
    }
    return wrap_tensor(env, std::move(out));
  });
}

static Napi::Object counter_object(Napi::Env env, const mveb::MemoryCounter& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("tensors", Napi::Number::New(env, static_cast<double>(m.buffers)));
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(m.bytes)));
  o.Set("peakBytes", Napi::Number::New(env, static_cast<double>(m.peak_bytes)));
  return o;
}

// memory() -> { cpu: {tensors, bytes, peakBytes}, cuda: {...} } (cuda zeros when unavailable)
static Napi::Value memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpu", counter_object(env, runtime(env).cpu().memory()));
  std::string reason;
  mveb::Backend* cuda = runtime(env).try_cuda(&reason);
  o.Set("cuda", counter_object(env, cuda ? cuda->memory() : mveb::MemoryCounter{}));
  return o;
}

static const char* precision_name(mveb::MatmulPrecision p) { return p == mveb::MatmulPrecision::High ? "high" : "highest"; }

// setMatmulPrecision('highest' | 'high'): the precision of the CPU backend's float32 matrix products
// (cpu_backend.h MatmulPrecision; 'high' uses the AMX bf16x3 SGEMM where CpuBackend::amx() holds).
// Anything else is E_ARG. Takes effect for the products computed after the call.
static Napi::Value set_matmul_precision(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const std::string s = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    mveb::MatmulPrecision p;
    if (s == "highest") {
      p = mveb::MatmulPrecision::Highest;
    } else if (s == "high") {
      p = mveb::MatmulPrecision::High;
    } else {
      throw_js(env, "E_ARG", "matmul precision must be 'highest' (fp32, the default) or 'high' (bf16x3 on AMX CPUs), found " +
                                 (info[0].IsString() ? "'" + s + "'" : std::string("a value that is not a string")));
    }
    static_cast<mveb::CpuBackend&>(runtime(env).cpu()).set_matmul_precision(p);
    return env.Undefined();
  });
}

// getMatmulPrecision() -> 'highest' | 'high'
static Napi::Value get_matmul_precision(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::String::New(env, precision_name(static_cast<mveb::CpuBackend&>(runtime(env).cpu()).matmul_precision()));
}

// backends() -> { cpu: {...features, isa, threads, amx, matmulPrecision}, cuda: { compiled, available, reason?, ... } }
static Napi::Value backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto& cpu = static_cast<mveb::CpuBackend&>(runtime(env).cpu());
  const mveb::CpuFeatures& f = cpu.features();
  Napi::Object c = Napi::Object::New(env);
  c.Set("available", true);
  c.Set("brand", f.brand);
  c.Set("isa", mveb::isa_name(cpu.isa()));
  c.Set("threads", cpu.pool().size());
  c.Set("avx512", f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq);
  c.Set("avx2", f.avx2);
  c.Set("fma", f.fma);
  c.Set("avx512bf16", f.avx512_bf16);
  c.Set("avx512vnni", f.avx512_vnni);
  c.Set("amx", cpu.amx());
  c.Set("matmulPrecision", precision_name(cpu.matmul_precision()));
  mveb::CudaInfo ci = mveb::cuda_query_info();
  Napi::Object g = Napi::Object::New(env);
  g.Set("compiled", ci.compiled);
  g.Set("available", ci.available);
  if (!ci.reason.empty()) g.Set("reason", ci.reason);
  if (ci.compiled) g.Set("arch", ci.archs);
  if (ci.driver_version) g.Set("driverVersion", ci.driver_version);
  if (ci.runtime_version) g.Set("runtimeVersion", ci.runtime_version);
  if (ci.available) {
    g.Set("deviceCount", ci.device_count);
    g.Set("device", ci.device_name);
    g.Set("computeCapability", std::to_string(ci.cc_major) + "." + std::to_string(ci.cc_minor));
    g.Set("totalMemory", static_cast<double>(ci.total_memory));
    g.Set("freeMemory", static_cast<double>(ci.free_memory));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("cpu", c);
  o.Set("cuda", g);
  return o;
}

// tensorInfo(handle) -> { shape, dtype, device }
static Napi::Value tensor_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    mveb::Tensor t = unwrap_tensor(env, info[0], "tensorInfo");
    Napi::Array shape = Napi::Array::New(env, t.shape.size());
    for (size_t i = 0; i < t.shape.size(); ++i) shape.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(t.shape[i])));
    Napi::Object o = Napi::Object::New(env);
    o.Set("shape", shape);
    o.Set("dtype", mveb::dtype_name(t.dtype));
    o.Set("device", mveb::device_name(t.device()));
    return o;
  });
}

void register_tensor(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = TensorHandle::define(env);
  addon_data(env).tensor_handle = Napi::Persistent(ctor);
  exports.Set("TensorHandle", ctor);
  exports.Set("tensorFrom", Napi::Function::New(env, tensor_from, "tensorFrom"));
  exports.Set("tensorInfo", Napi::Function::New(env, tensor_info, "tensorInfo"));
  exports.Set("tensorZeros", Napi::Function::New(env, tensor_zeros, "tensorZeros"));
  exports.Set("tensorRandn", Napi::Function::New(env, tensor_randn, "tensorRandn"));
  exports.Set("tensorRead", Napi::Function::New(env, tensor_read, "tensorRead"));
  exports.Set("tensorReadSync", Napi::Function::New(env, tensor_read_sync, "tensorReadSync"));
  exports.Set("tensorTo", Napi::Function::New(env, tensor_to, "tensorTo"));
  exports.Set("memory", Napi::Function::New(env, memory, "memory"));
  exports.Set("backends", Napi::Function::New(env, backends, "backends"));
  exports.Set("setMatmulPrecision", Napi::Function::New(env, set_matmul_precision, "setMatmulPrecision"));
  exports.Set("getMatmulPrecision", Napi::Function::New(env, get_matmul_precision, "getMatmulPrecision"));
}

}  // namespace mveb_binding
