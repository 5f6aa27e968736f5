// Token selection from one row of logits, in transformers' order: repetition penalty, then temperature, top-k,
// top-p and min-p, then a draw (or argmax). One definition with the CUDA sampler (cuda/sampling.cu):
// - the kept set is every token whose logit is >= a threshold: the k-th largest logit (top-k), the smallest logit
//   whose strictly larger logits hold less than top_p of the top-k set's probability mass (top-p), and
//   max + T log(min_p) (min-p, never above the maximum); ties at a cut are all kept;
// - the draw is u = Philox4x32-10(seed, step) (core/philox.h) mapped to [0, 1), and the token is found by the
//   inverse CDF over the kept tokens in index order, summed in f32 in 1024 consecutive chunks as the GPU does.
// So the same (seed, step) draws the same token on both backends from the same logits (up to the rounding of
// the sums at a cut or at the draw), and each draw depends only on its step, not on earlier draws.
#pragma once
#include <cstdint>
#include <vector>

#include "model/runner.h"

namespace plm {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits [vocab] are modified in place (repetition penalty). history: ids the penalty applies to. step: the
  // index of the token being drawn in its generation (0 for the first), the draw's Philox counter.
  int32_t sample(float* logits, int64_t vocab, const std::vector<int32_t>& history, uint64_t step);
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
  std::vector<uint32_t> keys_;                 // [vocab] order keys of the logits
  std::vector<std::pair<uint32_t, float>> kept_;  // top-p: (key, mass) of the top-k set
};

}  // namespace plm
