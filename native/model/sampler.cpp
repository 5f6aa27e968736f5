#include "model/sampler.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace plm {

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

int64_t Sampler::apply_mask(float* logits, int64_t vocab, const uint8_t* mask) {
  int64_t allowed = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (mask[i >> 3] & (1u << (i & 7))) ++allowed;
    else logits[i] = -INFINITY;
  }
  return allowed;
}

void Sampler::logprobs(const float* logits, int64_t vocab, float temperature, int32_t token, int top,
                       float* token_logprob, std::vector<std::pair<int32_t, float>>* top_out) {
  const double inv_t = temperature > 0.f ? 1.0 / temperature : 1.0;
  double mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i] * inv_t);
  double total = 0;
  for (int64_t i = 0; i < vocab; ++i) total += std::exp(logits[i] * inv_t - mx);
  const double lse = mx + std::log(total);
  *token_logprob = static_cast<float>(logits[token] * inv_t - lse);
  top_out->clear();
  if (top <= 0) return;
  std::vector<std::pair<float, int32_t>> best;  // a min-heap of the top candidates
  auto worse = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  for (int64_t i = 0; i < vocab; ++i) {
    const std::pair<float, int32_t> c{logits[i], static_cast<int32_t>(i)};
    if (static_cast<int>(best.size()) < top) {
      best.push_back(c);
      std::push_heap(best.begin(), best.end(), worse);
    } else if (worse(c, best.front())) {
      std::pop_heap(best.begin(), best.end(), worse);
      best.back() = c;
      std::push_heap(best.begin(), best.end(), worse);
    }
  }
  std::sort(best.begin(), best.end(), worse);
  for (const auto& c : best) top_out->emplace_back(c.second, static_cast<float>(c.first * inv_t - lse));
}

int32_t Sampler::sample(float* logits, int64_t vocab, const std::vector<int32_t>& history) {
  if (params_.repetition_penalty != 1.f && params_.repetition_penalty > 0.f) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= vocab) continue;
      float& l = logits[id];
      l = l < 0 ? l * params_.repetition_penalty : l / params_.repetition_penalty;
    }
  }
  if (params_.temperature <= 0.f) return argmax(logits, vocab);

  const float inv_t = 1.f / params_.temperature;
  candidates_.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) candidates_[i] = {logits[i] * inv_t, static_cast<int32_t>(i)};
  auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  candidates_.resize(keep);
  // Softmax over the survivors.
  const float max_logit = candidates_[0].first;
  std::vector<double> probs(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += probs[i] = std::exp(static_cast<double>(candidates_[i].first - max_logit));
  for (double& p : probs) p /= total;
  // top-p: keep the smallest prefix whose mass reaches top_p (always at least one token).
  if (params_.top_p < 1.f && params_.top_p > 0.f) {
    double cum = 0;
    size_t n = 0;
    while (n < keep) {
      cum += probs[n++];
      if (cum >= params_.top_p) break;
    }
    keep = n;
  }
  // min-p: drop tokens below min_p × the top probability.
  if (params_.min_p > 0.f) {
    const double floor_p = params_.min_p * probs[0];
    size_t n = 1;
    while (n < keep && probs[n] >= floor_p) ++n;
    keep = n;
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += probs[i];
  std::uniform_real_distribution<double> uniform(0.0, mass);
  double r = uniform(rng_), cum = 0;
  for (size_t i = 0; i < keep; ++i) {
    cum += probs[i];
    if (r < cum) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

}  // namespace plm
