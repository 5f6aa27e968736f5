#include "cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace plm::cpu {

void rope_rotate_half(float* x, int64_t T, int heads, int hd, const float* cos, const float* sin) {
  const int half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * hd;
      for (int i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

void rope_interleaved(float* x, int64_t T, int heads, int hd, int prefix, const float* cos, const float* sin) {
  rope_interleaved_rows(x, int64_t(heads) * hd, 0, T, heads, hd, prefix, cos, sin);
}

void rope_interleaved_rows(float* x, int64_t row_stride, int64_t t0, int64_t t1, int heads, int hd, int prefix,
                           const float* cos, const float* sin) {
  const int pairs = hd / 2;
  for (int64_t t = std::max<int64_t>(t0, prefix); t < t1; ++t) {
    const float* c = cos + (t - prefix) * pairs;
    const float* s = sin + (t - prefix) * pairs;
    for (int h = 0; h < heads; ++h) {
      float* v = x + t * row_stride + int64_t(h) * hd;
      for (int p = 0; p < pairs; ++p) {
        const float a = v[2 * p], b = v[2 * p + 1];
        v[2 * p] = a * c[p] - b * s[p];
        v[2 * p + 1] = b * c[p] + a * s[p];
      }
    }
  }
}

void rope_llama_table(const float* inv_freq, int hd, int64_t pos0, int64_t T, float* out_cos, float* out_sin) {
  const int half = hd / 2;
  for (int64_t t = 0; t < T; ++t) {
    // transformers: freqs = inv_freq (f32) * position (f32), then cos/sin in f32.
    const float pos = static_cast<float>(pos0 + t);
    for (int i = 0; i < half; ++i) {
      const float angle = inv_freq[i] * pos;
      out_cos[t * half + i] = std::cos(angle);
      out_sin[t * half + i] = std::sin(angle);
    }
  }
}

}  // namespace plm::cpu
