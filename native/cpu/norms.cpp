#include "cpu/norms.h"

#include <cstdint>
#include <cmath>

namespace plm::cpu {

void rms_norm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double mean = 0;
    for (int64_t i = 0; i < dim; ++i) mean += xr[i];
    mean /= dim;
    double var = 0;
    for (int64_t i = 0; i < dim; ++i) {
      double d = xr[i] - mean;
      var += d * d;
    }
    var /= dim;
    const float inv = 1.0f / std::sqrt(static_cast<float>(var) + eps);
    const float mu = static_cast<float>(mean);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - mu) * inv * w[i] + b[i];
  }
}

void layer_norm(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps,
                ThreadPool* pool) {
  if (!pool || rows < 64) return layer_norm(x, w, b, y, rows, dim, eps);
  pool->parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    layer_norm(x + r0 * dim, w, b, y + r0 * dim, r1 - r0, dim, eps);
  });
}

}  // namespace plm::cpu
