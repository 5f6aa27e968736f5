// RMSNorm (Llama) and LayerNorm (ViT), row by row, f32.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"

namespace plm::cpu {

// y[r] = w ⊙ (x[r] · rsqrt(mean(x[r]²) + eps)); x, y: [rows, dim]; may alias.
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps);
// Same, rows split over the pool (identical results).
void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps, ThreadPool* pool);

// y[r] = (x[r] - mean) · rsqrt(var + eps) ⊙ w + b (biased variance); x, y: [rows, dim]; may alias.
void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps);
// Same, rows split over the pool (identical results).
void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps,
                ThreadPool* pool);

}  // namespace plm::cpu
