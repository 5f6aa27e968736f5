// AVX-512 elementwise activations over arrays (the 16-lane functions are in activations16_avx512.h). GELU(erf)
// uses the Numerical Recipes erfc approximation (fractional error < 1.2e-7 for all z) with a Cephes-accurate
// exp, so it matches std::erf to f32 rounding level while running 16 lanes at a time.
#include <immintrin.h>

#include <cstdint>

#include "cpu/activations16_avx512.h"

namespace plm::cpu::kernels {

void silu_mul_avx512(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, silu_mul16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, m, silu_mul16(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

void gelu_erf_avx512(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

}  // namespace plm::cpu::kernels
