#include "cpu/cpu_features.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cstdint>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace plm::cpu {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  const bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
  uint64_t xcr0 = 0;
  if (osxsave) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (uint64_t(hi) << 32) | lo;
  }
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.avx2 = os_avx && avx && ((b >> 5) & 1);
  f.fma = os_avx && fma;
  f.f16c = os_avx && f16c;
  f.avx512f = os_avx512 && ((b >> 16) & 1);
  f.avx512dq = os_avx512 && ((b >> 17) & 1);
  f.avx512bw = os_avx512 && ((b >> 30) & 1);
  f.avx512vl = os_avx512 && ((b >> 31) & 1);
  f.avx512_vnni = os_avx512 && ((c >> 11) & 1);
  f.avx512_fp16 = os_avx512 && ((d >> 23) & 1);
  const bool amx_bf16 = (d >> 22) & 1, amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
  unsigned a1, b1, c1, d1;
  if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) f.avx512_bf16 = os_avx512 && ((a1 >> 5) & 1);
  if (amx_tile && (xcr0 & (uint64_t(3) << 17)) == (uint64_t(3) << 17)) {
    // Linux hands out the AMX tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) {
      f.amx_tile = true;
      f.amx_bf16 = amx_bf16;
      f.amx_int8 = amx_int8;
    }
  }
#elif defined(__aarch64__)
  f.neon = true;
#if defined(__linux__)
  constexpr unsigned long kHwcap2Bf16 = 1ul << 14;  // HWCAP2_BF16 (asm/hwcap.h)
  f.neon_bf16 = (getauxval(AT_HWCAP2) & kHwcap2Bf16) != 0;
#endif
#endif
  return f;
}

// The levels of PLM_CPU_ISA, best first (cpu_features.h).
#if defined(__x86_64__) || defined(_M_X64)
const char* const kLevels[] = {"amx", "avx512bf16", "avx512vnni", "avx512", "avx2", "portable"};
#elif defined(__aarch64__)
const char* const kLevels[] = {"neon-bf16", "neon", "portable"};
#else
const char* const kLevels[] = {"portable"};
#endif
constexpr int kLevelCount = static_cast<int>(sizeof(kLevels) / sizeof(kLevels[0]));

// The best level f supports (an index into kLevels).
int level_of(const CpuFeatures& f) {
#if defined(__x86_64__) || defined(_M_X64)
  const bool avx512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  if (avx512 && f.avx512_bf16 && f.amx_bf16) return 0;
  if (avx512 && f.avx512_bf16) return 1;
  if (avx512 && f.avx512_vnni) return 2;
  if (avx512) return 3;
  if (f.avx2 && f.fma && f.f16c) return 4;
  return 5;
#elif defined(__aarch64__)
  return f.neon_bf16 ? 0 : f.neon ? 1 : 2;
#else
  (void)f;
  return 0;
#endif
}

// Clears the features above level `cap`.
void cap_features(CpuFeatures& f, int cap) {
#if defined(__x86_64__) || defined(_M_X64)
  if (cap >= 1) f.amx_tile = f.amx_bf16 = f.amx_int8 = false;
  if (cap >= 2) f.avx512_bf16 = f.avx512_fp16 = false;
  if (cap >= 3) f.avx512_vnni = false;
  if (cap >= 4) f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = false;
  if (cap >= 5) f.avx2 = f.fma = f.f16c = false;
#elif defined(__aarch64__)
  if (cap >= 1) f.neon_bf16 = false;
  if (cap >= 2) f.neon = false;
#else
  (void)f, (void)cap;
#endif
}

struct Detected {
  CpuFeatures features;
  std::string request, note;
  int best = 0;  // level_of the uncapped features
};

Detected detect_capped() {
  Detected d;
  d.features = detect();
  d.best = level_of(d.features);
  const char* env = std::getenv("PLM_CPU_ISA");
  if (!env || !*env) return d;
  d.request = env;
  int cap = -1;
  for (int i = 0; i < kLevelCount; ++i)
    if (d.request == kLevels[i]) cap = i;
  if (cap < 0) {
    d.note = "unknown value, ignored (one of:";
    for (int i = 0; i < kLevelCount; ++i) d.note += std::string(" ") + kLevels[i];
    d.note += ")";
    std::fprintf(stderr, "perception-lm: PLM_CPU_ISA=%s: %s\n", env, d.note.c_str());
    return d;
  }
  const int have = level_of(d.features);
  if (cap < have) d.note = std::string("above this CPU's best level (") + kLevels[have] + "), no change";
  cap_features(d.features, cap);
  return d;
}

const Detected& detected() {
  static const Detected d = detect_capped();
  return d;
}

}  // namespace

const CpuFeatures& cpu_features() { return detected().features; }

const char* cpu_isa() { return kLevels[level_of(cpu_features())]; }
const std::string& cpu_isa_request() { return detected().request; }
const std::string& cpu_isa_note() { return detected().note; }

std::vector<std::string> cpu_isa_levels() {
  std::vector<std::string> v;
  for (int i = detected().best; i < kLevelCount; ++i) v.push_back(kLevels[i]);
  return v;
}

std::vector<std::string> cpu_feature_names() {
  const CpuFeatures& f = cpu_features();
  std::vector<std::string> n;
  auto add = [&](bool on, const char* name) {
    if (on) n.push_back(name);
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.f16c, "f16c");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl");
  add(f.avx512dq, "avx512dq");
  add(f.avx512_vnni, "avx512-vnni");
  add(f.avx512_bf16, "avx512-bf16");
  add(f.avx512_fp16, "avx512-fp16");
  add(f.amx_tile, "amx-tile");
  add(f.amx_bf16, "amx-bf16");
  add(f.amx_int8, "amx-int8");
  add(f.neon, "neon");
  add(f.neon_bf16, "neon-bf16");
  return n;
}

}  // namespace plm::cpu
