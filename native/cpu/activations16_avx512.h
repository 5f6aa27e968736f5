// Activations on 16 floats for AVX-512 (include only from *_avx512.cpp / *_amx.cpp files), shared by the
// elementwise passes (activations_avx512.cpp) and the AMX matmul's fused steps, so both give the same bits.
// GELU (erf form, nn.GELU()): erfc(z) = t·exp(-z² + P(t)), t = 1/(1 + z/2) (Numerical Recipes, < 1.2e-7
// relative). SwiGLU: silu(g) · u with the Cephes exp.
#pragma once
#include <immintrin.h>

#include "cpu/exp_avx512.h"

namespace plm::cpu::kernels {
// Internal linkage: compiled with per-file ISA flags, never merged across files.
namespace {

inline __m512 gelu16(__m512 x) {
  const __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(z, _mm512_set1_ps(0.5f), one));
  __m512 p = _mm512_set1_ps(0.17087277f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.82215223f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.48851587f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.13520398f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.27886807f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.18628806f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.09678418f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.37409196f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.00002368f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.26551223f));
  const __m512 y = _mm512_mul_ps(t, exp512(_mm512_fnmadd_ps(z, z, p)));  // erfc(|x|/√2)
  // x >= 0: x·(1 - y/2); x < 0: x·y/2
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 half_y = _mm512_mul_ps(y, _mm512_set1_ps(0.5f));
  const __m512 f = _mm512_mask_blend_ps(neg, _mm512_sub_ps(one, half_y), half_y);
  return _mm512_mul_ps(x, f);
}

// silu(g) · u = g / (1 + exp(-g)) · u
inline __m512 silu_mul16(__m512 g, __m512 u) {
  const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
  return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

}  // namespace
}  // namespace plm::cpu::kernels
