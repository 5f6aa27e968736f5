// Norm kernels: one 256-thread block per row; the row is read from L1/L2 twice (LayerNorm: mean, then
// variance of x - mean, as torch does), written once. Memory-bound, tiny next to the GEMMs.
#include "cuda/common.cuh"
#include "cuda/norms.cuh"
#include <cstdint>

namespace plm::cuda {

namespace {

__global__ void __launch_bounds__(256) k_rms_norm(const float* __restrict__ x, int64_t ld, const float* __restrict__ w,
                                                  float eps, int64_t dim, bf16* out_b, float* out_f) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * ld;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss, red);
  const float r = rsqrtf(ss / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = w[i] * (xr[i] * r);
    if (out_b) out_b[blockIdx.x * dim + i] = f2bf(v);
    if (out_f) out_f[blockIdx.x * dim + i] = v;
  }
}

__global__ void __launch_bounds__(256) k_layer_norm(const float* __restrict__ x, int64_t ld,
                                                    const float* __restrict__ w, const float* __restrict__ b,
                                                    float eps, int64_t dim, bf16* out_b, float* out_f) {
  __shared__ float red[32];
  const float* xr = x + blockIdx.x * ld;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
  const float mean = block_sum(s, red) / float(dim);
  float v2 = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float d = xr[i] - mean;
    v2 += d * d;
  }
  const float r = rsqrtf(block_sum(v2, red) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = (xr[i] - mean) * r * w[i] + b[i];
    if (out_b) out_b[blockIdx.x * dim + i] = f2bf(v);
    if (out_f) out_f[blockIdx.x * dim + i] = v;
  }
}

}  // namespace

void rms_norm(const float* x, int64_t ld_x, const float* w, float eps, int64_t rows, int64_t dim, uint16_t* out_bf16,
              float* out_f32, void* stream) {
  if (rows <= 0) return;
  k_rms_norm<<<unsigned(rows), 256, 0, as_stream(stream)>>>(x, ld_x, w, eps, dim, reinterpret_cast<bf16*>(out_bf16),
                                                            out_f32);
  PLM_CU_LAUNCH_CHECK();
}

void layer_norm(const float* x, int64_t ld_x, const float* w, const float* b, float eps, int64_t rows, int64_t dim,
                uint16_t* out_bf16, float* out_f32, void* stream) {
  if (rows <= 0) return;
  k_layer_norm<<<unsigned(rows), 256, 0, as_stream(stream)>>>(x, ld_x, w, b, eps, dim,
                                                              reinterpret_cast<bf16*>(out_bf16), out_f32);
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
