#include "cpu_info_binding.h"

#include "cpu/kernel_info.h"

namespace {

Napi::Value CpuKernels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const plm::cpu::CpuKernels k = plm::cpu::cpu_kernels();
  Napi::Object o = Napi::Object::New(env);
  o.Set("isa", k.isa);
  Napi::Array levels = Napi::Array::New(env, k.isa_levels.size());
  for (size_t i = 0; i < k.isa_levels.size(); ++i) levels.Set(uint32_t(i), k.isa_levels[i]);
  o.Set("isaLevels", levels);
  o.Set("isaRequest", k.isa_request);
  o.Set("isaNote", k.isa_note);
  o.Set("cpuModel", k.cpu_model);
  o.Set("gemmF32", k.gemm_f32);
  o.Set("gemmBf16", k.gemm_bf16);
  o.Set("attentionF32", k.attention_f32);
  o.Set("attentionBf16", k.attention_bf16);
  o.Set("decode", k.decode);
  o.Set("decodeQuantized", k.decode_quantized);
  return o;
}

}  // namespace

void RegisterCpuInfo(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuKernels", Napi::Function::New(env, CpuKernels));
}
