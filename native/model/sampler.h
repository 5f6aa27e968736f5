// Token selection from one row of logits, in transformers' order: repetition penalty, then
// temperature, top-k, top-p and min-p, then a draw from the seeded generator (or argmax).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "model/runner.h"

namespace plm {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits [vocab] are modified in place. history: ids the repetition penalty applies to.
  int32_t sample(float* logits, int64_t vocab, const std::vector<int32_t>& history);
  static int32_t argmax(const float* logits, int64_t vocab);  // first maximal index, like torch

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace plm
