// Elementwise activations, f32.
#pragma once
#include <cstdint>

namespace plm::cpu {

// out[i] = silu(gate[i]) · up[i]  (Llama SwiGLU); out may alias gate.
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

// x[i] = 0.5 · x · (1 + erf(x / √2))  (nn.GELU(), exact)
void gelu_erf(float* x, int64_t n);

}  // namespace plm::cpu
