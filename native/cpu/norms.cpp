#include "cpu/norms.h"

#include <cstdint>
#include <cmath>

#include "cpu/cpu_features.h"

namespace plm::cpu::kernels {
void layer_norm_avx512(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps);
void rms_norm_avx512(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps);
}  // namespace plm::cpu::kernels

namespace plm::cpu {
namespace {

// The AVX-512 row loops (norms_avx512.cpp) give the same bits, ~3x faster.
bool use_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = cpu_features().avx512f;
  return avx512;
#else
  return false;
#endif
}

// Sum of term(0 .. n-1) in double over 8 independent accumulators: one serial chain of double adds ran at
// one element per add latency (~2.5 ms per PE-L LayerNorm of 1025 x 1024 on 2 threads).
template <class Term>
double sum8(int64_t n, Term term) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += term(i + j);
  for (; i < n; ++i) acc[0] += term(i);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

namespace kernels {

// The portable loops, which define the bits every other implementation reproduces.
void rms_norm_generic(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const double ss = sum8(dim, [&](int64_t i) { return static_cast<double>(xr[i]) * xr[i]; });
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

void layer_norm_generic(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    const double mean = sum8(dim, [&](int64_t i) { return static_cast<double>(xr[i]); }) / dim;
    const double var = sum8(dim, [&](int64_t i) {
                         const double d = xr[i] - mean;
                         return d * d;
                       }) / dim;
    const float inv = 1.0f / std::sqrt(static_cast<float>(var) + eps);
    const float mu = static_cast<float>(mean);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - mu) * inv * w[i] + b[i];
  }
}

}  // namespace kernels

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
#if defined(__x86_64__) || defined(_M_X64)
  if (use_avx512()) return kernels::rms_norm_avx512(x, w, y, rows, dim, eps);
#endif
  kernels::rms_norm_generic(x, w, y, rows, dim, eps);
}

void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps) {
#if defined(__x86_64__) || defined(_M_X64)
  if (use_avx512()) return kernels::layer_norm_avx512(x, w, b, y, rows, dim, eps);
#endif
  kernels::layer_norm_generic(x, w, b, y, rows, dim, eps);
}

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps, ThreadPool* pool) {
  if (!pool || rows < 64) return rms_norm(x, w, y, rows, dim, eps);
  pool->parallel_for(rows, 16, [&](int64_t r0, int64_t r1) { rms_norm(x + r0 * dim, w, y + r0 * dim, r1 - r0, dim, eps); });
}

void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps,
                ThreadPool* pool) {
  if (!pool || rows < 64) return layer_norm(x, w, b, y, rows, dim, eps);
  pool->parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    layer_norm(x + r0 * dim, w, b, y + r0 * dim, r1 - r0, dim, eps);
  });
}

}  // namespace plm::cpu
