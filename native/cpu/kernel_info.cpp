#include "cpu/kernel_info.h"

#include <fstream>

#include "cpu/attention.h"
#include "cpu/cpu_features.h"
#include "cpu/matmul.h"

namespace plm::cpu {
namespace {

std::string read_cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    if (key == "model name" || key == "Model" || key == "CPU part") {
      const auto start = line.find_first_not_of(" \t", colon + 1);
      return start == std::string::npos ? "" : line.substr(start);
    }
  }
  return "";
}

}  // namespace

CpuKernels cpu_kernels() {
  CpuKernels k;
  const CpuFeatures& f = cpu_features();
  k.isa = cpu_isa();
  k.isa_levels = cpu_isa_levels();
  k.isa_request = cpu_isa_request();
  k.isa_note = cpu_isa_note();
  k.cpu_model = read_cpu_model();
  k.gemm_f32 = gemm_kernel_name(Precision::kF32);
  k.gemm_bf16 = gemm_kernel_name(Precision::kBF16);
  k.attention_f32 = attention_kernel_name(Precision::kF32);
  k.attention_bf16 = attention_kernel_name(Precision::kBF16);
  const std::string gemv = matmul_kernel_name();
  k.decode = gemv.substr(0, gemv.find('+')) + " (GEMV, f32 activations)";
  if (const char* bf16 = decode_bf16_kernel_name()) k.decode += std::string("; bf16: ") + bf16;
  const bool avx512 = f.avx512f && f.avx512bw && f.avx512dq;
  if (avx512 && f.avx512_vnni && f.avx512vl) k.decode_quantized = "avx512-vnni (int8 activations)";
  else if (avx512) k.decode_quantized = "avx512 (f32 activations)";
  else if (f.neon) k.decode_quantized = "neon (f32 activations)";
  else k.decode_quantized = "portable (f32 activations)";
  return k;
}

}  // namespace plm::cpu
