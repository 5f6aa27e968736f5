// RMSNorm (Llama) and LayerNorm (ViT) on the GPU, one block per row, f32 math (plain C++ declarations).
#pragma once
#include <cstdint>

namespace plm::cuda {

// x: f32 [rows, ld_x]; w (and b): f32 [dim]. Writes out_bf16 [rows, dim] (the next GEMM's input) and/or
// out_f32 [rows, dim] (may alias x); either may be null.
void rms_norm(const float* x, int64_t ld_x, const float* w, float eps, int64_t rows, int64_t dim, uint16_t* out_bf16,
              float* out_f32, void* stream);
void layer_norm(const float* x, int64_t ld_x, const float* w, const float* b, float eps, int64_t rows, int64_t dim,
                uint16_t* out_bf16, float* out_f32, void* stream);

}  // namespace plm::cuda
