// What the CPU dispatch chose on this machine (after PLM_CPU_ISA), for `plm info` and the benchmarks' JSON.
#pragma once
#include <string>
#include <vector>

namespace plm::cpu {

struct CpuKernels {
  std::string isa;                      // the level the kernels are chosen for (cpu_isa())
  std::vector<std::string> isa_levels;  // the levels this CPU has, best first (cpu_isa_levels())
  std::string isa_request, isa_note;    // PLM_CPU_ISA as given and what became of it ("" when unset / applied)
  std::string cpu_model;                // e.g. "AMD EPYC 9R45" (/proc/cpuinfo), "" when unknown
  std::string gemm_f32, gemm_bf16;      // many-row matmuls (prefill, vision, projector) by precision
  std::string attention_f32, attention_bf16;
  std::string decode, decode_quantized;  // the GEMV of decode (M <= 8), float and int8/q4 weights
};

CpuKernels cpu_kernels();

}  // namespace plm::cpu
