#include "cpu/activations.h"

#include <algorithm>
#include <cmath>

#include "cpu/cpu_features.h"

namespace plm::cpu::kernels {
void gelu_erf_avx512(float* x, int64_t n);
void silu_mul_avx512(const float* gate, const float* up, float* out, int64_t n);
}  // namespace plm::cpu::kernels

namespace plm::cpu {

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * up[i];
  }
}

void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = cpu_features().avx512f && cpu_features().avx512dq;
#endif
  auto fn = [&](int64_t b, int64_t e) {
    const int64_t lo = b * 4096, hi = std::min(n, e * 4096);
#if defined(__x86_64__) || defined(_M_X64)
    if (avx512) {
      kernels::silu_mul_avx512(gate + lo, up + lo, out + lo, hi - lo);
      return;
    }
#endif
    silu_mul(gate + lo, up + lo, out + lo, hi - lo);
  };
  const int64_t blocks = (n + 4095) / 4096;
  if (pool && blocks > 1) pool->parallel_for(blocks, 4, fn);
  else fn(0, blocks);
}

void gelu_erf(float* x, int64_t n, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = cpu_features().avx512f && cpu_features().avx512dq;
#endif
  auto fn = [&](int64_t b, int64_t e) {
    const int64_t lo = b * 4096, hi = std::min(n, e * 4096);
#if defined(__x86_64__) || defined(_M_X64)
    if (avx512) {
      kernels::gelu_erf_avx512(x + lo, hi - lo);
      return;
    }
#endif
    gelu_erf(x + lo, hi - lo);
  };
  const int64_t blocks = (n + 4095) / 4096;
  if (pool) pool->parallel_for(blocks, 4, fn);
  else fn(0, blocks);
}

}  // namespace plm::cpu
