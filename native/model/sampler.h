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
  // Sets the logits of tokens whose bit is clear in mask (bit t of byte t / 8) to -inf. Returns the number of
  // allowed tokens.
  static int64_t apply_mask(float* logits, int64_t vocab, const uint8_t* mask);
  // log softmax(logits / temperature) (temperature <= 0: of the logits) at `token`, and the `top` most likely
  // tokens (ties: lower id first).
  static void logprobs(const float* logits, int64_t vocab, float temperature, int32_t token, int top,
                       float* token_logprob, std::vector<std::pair<int32_t, float>>* top_out);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

}  // namespace plm
