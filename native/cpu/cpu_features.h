// cpu_features.h: run-time CPU feature detection (CPUID + XGETBV) and the ISA the kernels use.
// MVEB_ISA=scalar|avx2|avx512 lowers the choice (tests run every path on one machine); it can never
// raise it above what the CPU supports.
#pragma once
#include <string>

namespace mveb {

struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false,
       avx512_bf16 = false, avx512_vnni = false;
  std::string brand;
};

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa isa);

CpuFeatures detect_cpu_features();
// Best ISA the CPU supports, lowered by MVEB_ISA when set.
Isa select_isa(const CpuFeatures& f);

}  // namespace mveb
