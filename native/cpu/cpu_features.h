// cpu_features.h: run-time CPU feature detection (CPUID + XGETBV) and the ISA the kernels use.
// MVEB_ISA=scalar|avx2|avx512 lowers the choice (tests run every path on one machine); it can never
// raise it above what the CPU supports.
#pragma once
#include <string>

namespace mveb {

struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false,
       avx512_bf16 = false, avx512_vnni = false, amx_tile = false, amx_bf16 = false;
  std::string brand;
};

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };
const char* isa_name(Isa isa);

CpuFeatures detect_cpu_features();
// Whether the AMX bf16 SGEMM can run: the CPU has AMX-TILE, AMX-BF16 and AVX512-BF16 (with the
// AVX-512 ISA selected) and the kernel grants this process the tile data state (Linux arch_prctl
// ARCH_REQ_XCOMP_PERM, asked once per process). MVEB_ISA below avx512 turns it off too.
bool amx_usable(const CpuFeatures& f, Isa isa);
// Best ISA the CPU supports, lowered by MVEB_ISA when set.
Isa select_isa(const CpuFeatures& f);

}  // namespace mveb
