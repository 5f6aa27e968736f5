// The multimodal projector: linear_1 -> exact GELU -> linear_2 -> 2x2 average pooling on the patch grid.
#pragma once
#include <cstdint>
#include <vector>

#include "core/scratch.h"
#include "core/thread_pool.h"
#include "cpu/matmul.h"
#include "model/model.h"
#include "model/runner.h"

namespace plm {

class Projector {
 public:
  // Activation precision of the large matmuls (cpu::Precision::kBF16: AMX tiles where available).
  void set_precision(cpu::Precision p) { precision_ = p; }
  Projector(const LoadedModel& model, ThreadPool* pool);
  // patches [tiles, grid*grid, C] (CLS already removed) -> out [tiles * tokens_per_tile, hidden].
  void forward(const float* patches, int64_t tiles, float* out, const DumpFn& dump);

 private:
  int grid_, pool_ratio_, width_, hidden_;
  ThreadPool* pool_;
  cpu::Precision precision_ = cpu::Precision::kF32;
  cpu::WeightMatrix linear1_, linear2_;
  std::vector<float> bias1_, bias2_;  // [hidden]
  Scratch<float> f1_, f2_;  // [tiles, P, D] after linear_1 (+ GELU), after linear_2; kept between calls
};

}  // namespace plm
