// The fused GEMM/GEMV epilogue on the device (bias, GELU, store bf16/f32 or add into the f32 residual),
// shared by the mma.sync (gemm.cu) and wgmma (gemm_wgmma.cu) kernels. CUDA-only.
#pragma once
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gemm.cuh"

namespace plm::cuda {
namespace {

struct EpDev {
  int mode;
  const float* bias;
  int gelu;
  const float* scale;
  void* out;
  int64_t ldo;
};

inline EpDev to_dev(const Epilogue& e) {
  return EpDev{static_cast<int>(e.mode), e.bias, e.gelu ? 1 : 0, e.scale, e.out, e.ldo};
}

__device__ __forceinline__ float ep_value(const EpDev& ep, int64_t col, float v) {
  if (ep.bias) v += ep.bias[col];
  if (ep.gelu) v = gelu_erf_f(v);
  return v;
}
__device__ __forceinline__ void ep_store(const EpDev& ep, int64_t row, int64_t col, float v) {
  v = ep_value(ep, col, v);
  if (ep.mode == 0) {
    static_cast<bf16*>(ep.out)[row * ep.ldo + col] = f2bf(v);
  } else if (ep.mode == 1) {
    static_cast<float*>(ep.out)[row * ep.ldo + col] = v;
  } else {
    float* o = static_cast<float*>(ep.out) + row * ep.ldo + col;
    *o += (ep.scale ? ep.scale[col] : 1.f) * v;
  }
}
// Columns col and col + 1 of one row (col even); one 4- or 8-byte store when both lie inside [0, N).
__device__ __forceinline__ void ep_store2(const EpDev& ep, int64_t row, int64_t col, int64_t N, float v0, float v1) {
  if (col + 1 >= N || (ep.ldo & 1) || (reinterpret_cast<uintptr_t>(ep.out) & 7)) {
    if (col < N) ep_store(ep, row, col, v0);
    if (col + 1 < N) ep_store(ep, row, col + 1, v1);
    return;
  }
  v0 = ep_value(ep, col, v0);
  v1 = ep_value(ep, col + 1, v1);
  if (ep.mode == 0) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<bf16*>(ep.out) + row * ep.ldo + col) = __floats2bfloat162_rn(v0, v1);
  } else if (ep.mode == 1) {
    *reinterpret_cast<float2*>(static_cast<float*>(ep.out) + row * ep.ldo + col) = make_float2(v0, v1);
  } else {
    float2* o = reinterpret_cast<float2*>(static_cast<float*>(ep.out) + row * ep.ldo + col);
    float2 r = *o;
    r.x += (ep.scale ? ep.scale[col] : 1.f) * v0;
    r.y += (ep.scale ? ep.scale[col + 1] : 1.f) * v1;
    *o = r;
  }
}

}  // namespace
}  // namespace plm::cuda
