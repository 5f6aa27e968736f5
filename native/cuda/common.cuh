// Internal helpers shared by the .cu files (CUDA-only: never include from plain C++).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/runtime.cuh"

namespace plm::cuda {

typedef __nv_bfloat16 bf16;

#define PLM_CU_CHECK(expr)                                                                              \
  do {                                                                                                  \
    cudaError_t e_ = (expr);                                                                            \
    if (e_ != cudaSuccess) ::plm::cuda::throw_cuda(e_, #expr, __FILE__, __LINE__);                      \
  } while (0)
#define PLM_CU_LAUNCH_CHECK() PLM_CU_CHECK(cudaGetLastError())

[[noreturn]] void throw_cuda(cudaError_t e, const char* what, const char* file, int line);

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float gelu_erf_f(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float silu_f(float x) { return x / (1.f + expf(-x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* red /* [32] shared */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : 0.f;
  return warp_sum(t);
}

// 8 bf16 <-> 16 bytes
union Pack8 {
  uint4 u;
  __nv_bfloat162 h[4];
};

}  // namespace plm::cuda
