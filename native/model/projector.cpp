#include "model/projector.h"

#include "core/op_profile.h"
#include "cpu/activations.h"
#include "model/weights_f32.h"
#include <cstdint>

namespace plm {

Projector::Projector(const LoadedModel& model, ThreadPool* pool)
    : grid_(model.config.vision.grid()),
      pool_ratio_(model.config.projector_pooling_ratio),
      width_(model.config.vision.width),
      hidden_(model.config.text.hidden_size),
      pool_(pool) {
  const std::string p = "model.multi_modal_projector.";
  linear1_ = matrix(model.get(p + "linear_1.weight"));
  linear2_ = matrix(model.get(p + "linear_2.weight"));
  bias1_ = load_f32(model, p + "linear_1.bias");
  bias2_ = load_f32(model, p + "linear_2.bias");
}

void Projector::forward(const float* patches, int64_t tiles, float* out, const DumpFn& dump) {
  const int64_t P = int64_t(grid_) * grid_, D = hidden_, M = tiles * P;
  float* f1 = f1_.get(M * D);  // [tiles, P, D]
  float* f2 = f2_.get(M * D);
  if (dump) {  // the stage before GELU is dumped on its own
    cpu::matmul(patches, M, linear1_, bias1_.data(), f1, pool_, precision_);
    dump("projector.linear_1", f1, {tiles, P, D});
    cpu::gelu_erf(f1, M * D, pool_);
  } else {
    OpTimer t("projector.linear_1_gelu");
    cpu::matmul(patches, M, linear1_, bias1_.data(), f1, pool_, precision_, cpu::Epilogue::kGeluErf);
  }
  { OpTimer t("projector.linear_2"); cpu::matmul(f1, M, linear2_, bias2_.data(), f2, pool_, precision_); }
  OpTimer t_pool("projector.pool");
  const int r = pool_ratio_ > 0 ? pool_ratio_ : 1;
  const int og = grid_ / r;
  const float inv = 1.0f / static_cast<float>(r * r);
  // adaptive_avg_pool2d with an exact r x r window: sum the window row by row, then divide.
  for (int64_t t = 0; t < tiles; ++t)
    for (int oy = 0; oy < og; ++oy)
      for (int ox = 0; ox < og; ++ox) {
        float* o = out + ((t * og + oy) * og + ox) * D;
        for (int64_t d = 0; d < D; ++d) {
          float s = 0.f;
          for (int dy = 0; dy < r; ++dy)
            for (int dx = 0; dx < r; ++dx) s += f2[(t * P + (oy * r + dy) * grid_ + (ox * r + dx)) * D + d];
          o[d] = s * inv;
        }
      }
  if (dump) dump("projector.out", out, {tiles * og * og, D});
}

}  // namespace plm
