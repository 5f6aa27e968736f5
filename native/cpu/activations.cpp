#include "cpu/activations.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <functional>

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

namespace {

bool use_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = cpu_features().avx512f && cpu_features().avx512dq;
  return avx512;
#else
  return false;
#endif
}

// fn(lo, hi) over [0, n) in blocks of 4096 elements, the blocks split over the pool.
void over_blocks(int64_t n, ThreadPool* pool, const std::function<void(int64_t, int64_t)>& fn) {
  constexpr int64_t kBlock = 4096;
  parallel_for(pool, (n + kBlock - 1) / kBlock, 4,
               [&](int64_t b, int64_t e) { fn(b * kBlock, std::min(n, e * kBlock)); });
}

}  // namespace

void silu_mul(const float* gate, const float* up, float* out, int64_t n, ThreadPool* pool) {
  [[maybe_unused]] const bool avx512 = use_avx512();
  over_blocks(n, pool, [&](int64_t lo, int64_t hi) {
#if defined(__x86_64__) || defined(_M_X64)
    if (avx512) return kernels::silu_mul_avx512(gate + lo, up + lo, out + lo, hi - lo);
#endif
    silu_mul(gate + lo, up + lo, out + lo, hi - lo);
  });
}

void gelu_erf(float* x, int64_t n, ThreadPool* pool) {
  [[maybe_unused]] const bool avx512 = use_avx512();
  over_blocks(n, pool, [&](int64_t lo, int64_t hi) {
#if defined(__x86_64__) || defined(_M_X64)
    if (avx512) return kernels::gelu_erf_avx512(x + lo, hi - lo);
#endif
    gelu_erf(x + lo, hi - lo);
  });
}

}  // namespace plm::cpu
