// cpu_backend.h: the CPU implementation of the op table (core/backend.h). Memory is 64-byte aligned
// host memory; kernels run on the backend's ThreadPool and pick AVX-512 / AVX2 / scalar code at run
// time (isa()). The op bodies live in one file per area (gemm.cpp, conv.cpp, batchnorm.cpp,
// elementwise.cpp, optim.cpp, vmf.cpp, ...); this header only declares them.
#pragma once
#include <memory>

#include "core/backend.h"
#include "core/threadpool.h"
#include "cpu/cpu_features.h"

namespace mveb {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  Device device() const override { return Device::CPU; }
  std::string name() const override { return "cpu"; }
  ThreadPool& pool() { return *pool_; }
  Isa isa() const { return isa_; }
  const CpuFeatures& features() const { return features_; }

  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(float* dst, float value, size_t n) override;
  void synchronize() override {}

  // ==== kernels (gemm.cpp, layout.cpp, conv.cpp, batchnorm.cpp, elementwise.cpp, optim.cpp) ====
  // (declared by the kernels' owner)

  // ==== MVEB loss pieces (loss_rows.cpp, vmf.cpp) ====
  // (declared by the loss's owner)

 private:
  CpuFeatures features_;
  Isa isa_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace mveb
