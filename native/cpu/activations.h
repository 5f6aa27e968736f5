// Elementwise activations, f32.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"

namespace plm::cpu {

// out[i] = silu(gate[i]) · up[i]  (Llama SwiGLU); out may alias gate.
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
// Same, split over the pool, 16 lanes at a time on AVX-512 (Cephes exp, ~1 ulp).
void silu_mul(const float* gate, const float* up, float* out, int64_t n, ThreadPool* pool);

// x[i] = 0.5 · x · (1 + erf(x / √2))  (nn.GELU(), exact)
void gelu_erf(float* x, int64_t n);
// Same, split over the pool, 16 lanes at a time on AVX-512 (erfc approximation, < 1.2e-7 relative).
void gelu_erf(float* x, int64_t n, ThreadPool* pool);

}  // namespace plm::cpu
