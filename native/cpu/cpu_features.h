// What this CPU and OS can run, detected once at run time (one binary serves every CPU), optionally capped by
// the environment variable PLM_CPU_ISA so that a lower ISA's kernels can be measured and tested on a better CPU:
//   x86-64:  amx | avx512bf16 | avx512vnni | avx512 | avx2 | portable
//   aarch64: neon-bf16 | neon | portable
// Each level keeps the features it names and those of the levels below it (avx512bf16: AVX-512 F/BW/VL/DQ,
// VNNI and BF16, no AMX; avx512vnni: no BF16; avx512: no VNNI; avx2: AVX2/FMA/F16C only; portable: no SIMD
// kernels). A level above what the CPU has changes nothing; an unknown value is reported on stderr and ignored.
#pragma once
#include <string>
#include <vector>

namespace plm::cpu {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;  // true only when the OS granted AMX state
  bool neon = false;
  bool neon_bf16 = false;  // ARMv8.6 BF16 (BFDOT, BFMMLA), Linux HWCAP2_BF16
};

const CpuFeatures& cpu_features();
std::vector<std::string> cpu_feature_names();  // e.g. {"avx2", "fma", "avx512f", ..., "amx-bf16"}

// The ISA level the kernels are chosen for (the names above): the best the CPU has, or PLM_CPU_ISA's cap.
const char* cpu_isa();
// PLM_CPU_ISA as given ("" when unset), and what became of it ("" when unset or applied as asked; else why not).
const std::string& cpu_isa_request();
const std::string& cpu_isa_note();
// Every level this CPU (as detected, before the cap) can run, best first: the values PLM_CPU_ISA can usefully take.
std::vector<std::string> cpu_isa_levels();

}  // namespace plm::cpu
