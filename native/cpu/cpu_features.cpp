// cpu_features.cpp: see cpu_features.h.
#include "cpu/cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define MVEB_X86 1
#endif
#if defined(MVEB_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mveb {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#ifdef MVEB_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  __get_cpuid(1, &a, &b, &c, &d);
  const bool osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  const bool ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xE6) == 0xE6;
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm_os && ((b >> 5) & 1);
    f.fma = ymm_os && fma;
    f.avx512f = zmm_os && ((b >> 16) & 1);
    f.avx512dq = zmm_os && ((b >> 17) & 1);
    f.avx512bw = zmm_os && ((b >> 30) & 1);
    f.avx512vl = zmm_os && ((b >> 31) & 1);
    f.avx512_vnni = zmm_os && ((c >> 11) & 1);
    const bool tiles_os = (xcr0 & 0x60000) == 0x60000;  // XTILECFG and XTILEDATA
    f.amx_bf16 = tiles_os && ((d >> 22) & 1);
    f.amx_tile = tiles_os && ((d >> 24) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = zmm_os && ((a >> 5) & 1);
  }
  unsigned brand[12] = {};
  if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
    for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002 + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2], &brand[4 * i + 3]);
    char s[49] = {};
    std::memcpy(s, brand, 48);
    f.brand = s;
    while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  }
#endif
  return f;
}

bool amx_usable(const CpuFeatures& f, Isa isa) {
  if (isa != Isa::Avx512 || !f.amx_tile || !f.amx_bf16 || !f.avx512_bf16) return false;
#if defined(MVEB_X86) && defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return granted;
#else
  return false;
#endif
}

Isa select_isa(const CpuFeatures& f) {
  Isa best = Isa::Scalar;
  if (f.avx2 && f.fma) best = Isa::Avx2;
  if (best == Isa::Avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) best = Isa::Avx512;
  if (const char* s = std::getenv("MVEB_ISA")) {
    Isa want = best;
    if (!std::strcmp(s, "scalar")) want = Isa::Scalar;
    else if (!std::strcmp(s, "avx2")) want = Isa::Avx2;
    else if (!std::strcmp(s, "avx512")) want = Isa::Avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

}  // namespace mveb
