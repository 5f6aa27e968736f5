#include "model/rope_tables.h"

#include <cmath>

namespace plm {

std::vector<float> llama_rope_inv_freq(const TextConfig& text) {
  const int hd = text.head_dim;
  std::vector<float> inv(hd / 2);
  // transformers: 1 / base ** (arange(0, hd, 2).float() / hd), in f32.
  const float base = static_cast<float>(text.rope.theta);
  for (int i = 0; i < hd / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(hd);
    inv[i] = 1.0f / std::pow(base, exponent);
  }
  if (text.rope.type != RopeConfig::Type::kLlama3) return inv;
  // _compute_llama3_parameters, evaluated in f32 like torch.
  const float factor = static_cast<float>(text.rope.factor);
  const float low = static_cast<float>(text.rope.low_freq_factor);
  const float high = static_cast<float>(text.rope.high_freq_factor);
  const float old_ctx = static_cast<float>(text.rope.original_max_position_embeddings);
  const float low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
  const float two_pi = 2.0f * static_cast<float>(M_PI);
  for (float& f : inv) {
    float wavelen = two_pi / f;
    float scaled = wavelen > low_wavelen ? f / factor : f;
    float smooth = (old_ctx / wavelen - low) / (high - low);
    float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
    bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    f = medium ? smoothed : scaled;
  }
  return inv;
}

void pe_rope_tables(const VisionConfig& v, std::vector<float>* cos_out, std::vector<float>* sin_out) {
  const int grid = v.grid(), hd = v.head_dim, bands = hd / 4;
  std::vector<float> band(bands);
  for (int k = 0; k < bands; ++k) {
    float e = static_cast<float>(k) / static_cast<float>(bands);
    band[k] = 1.0f / std::pow(v.rope_temperature, e);
  }
  // timm build_fourier_pos_embed: t = (arange(grid) + offset) [/ grid * ref]; pos = t * band.
  std::vector<float> t(grid);
  for (int i = 0; i < grid; ++i) {
    float x = static_cast<float>(i) + v.rope_grid_offset;
    if (v.ref_feat_shape > 0) x = x / static_cast<float>(grid) * static_cast<float>(v.ref_feat_shape);
    t[i] = x;
  }
  cos_out->assign(static_cast<size_t>(grid) * grid * (hd / 2), 0.f);
  sin_out->assign(cos_out->size(), 0.f);
  for (int y = 0; y < grid; ++y)
    for (int x = 0; x < grid; ++x) {
      float* c = cos_out->data() + (static_cast<size_t>(y) * grid + x) * (hd / 2);
      float* s = sin_out->data() + (static_cast<size_t>(y) * grid + x) * (hd / 2);
      for (int k = 0; k < bands; ++k) {
        float ax = t[x] * band[k], ay = t[y] * band[k];
        c[k] = std::cos(ax);
        s[k] = std::sin(ax);
        c[bands + k] = std::cos(ay);
        s[bands + k] = std::sin(ay);
      }
    }
}

}  // namespace plm
