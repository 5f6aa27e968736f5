// N-API binding of the CPU dispatch report (native/cpu/kernel_info.h).
#pragma once
#include <napi.h>

// Adds to `exports`:
//   cpuKernels() -> { isa, isaLevels: string[], isaRequest, isaNote, cpuModel, gemmF32, gemmBf16, attentionF32,
//                     attentionBf16, decode, decodeQuantized }   (synchronous; strings, "" where not applicable)
void RegisterCpuInfo(Napi::Env env, Napi::Object exports);
