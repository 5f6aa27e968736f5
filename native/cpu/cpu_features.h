// What this CPU and OS can run, detected once at run time (one binary serves every CPU).
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
};

const CpuFeatures& cpu_features();
std::vector<std::string> cpu_feature_names();  // e.g. {"avx2", "fma", "avx512f", ..., "amx-bf16"}

}  // namespace plm::cpu
