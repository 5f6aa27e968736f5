#include "model/sampler.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "core/philox.h"
#include <unordered_set>

namespace plm {

Sampler::Sampler(const SamplingParams& params) : params_(params) {}

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

namespace {

uint32_t order_key(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return float_order_key(bits);
}

}  // namespace

int32_t Sampler::sample(float* logits, int64_t vocab, const std::vector<int32_t>& history, uint64_t step) {
  if (params_.repetition_penalty != 1.f && params_.repetition_penalty > 0.f) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= vocab) continue;
      float& l = logits[id];
      l = l < 0 ? l * params_.repetition_penalty : l / params_.repetition_penalty;
    }
  }
  const int32_t best = argmax(logits, vocab);
  if (params_.temperature <= 0.f) return best;

  const float mx = logits[best], inv_t = 1.f / params_.temperature;
  keys_.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) keys_[i] = order_key(logits[i]);
  uint32_t thr = 0;  // keep keys >= thr
  if (params_.top_k > 0 && params_.top_k < vocab) {
    // The k-th largest key: the largest K with count(key >= K) >= top_k.
    std::vector<uint32_t> k(keys_);
    std::nth_element(k.begin(), k.begin() + (params_.top_k - 1), k.end(), std::greater<uint32_t>());
    thr = k[static_cast<size_t>(params_.top_k - 1)];
  }
  if (params_.top_p > 0.f && params_.top_p < 1.f) {
    kept_.clear();
    double z = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (keys_[i] < thr || keys_[i] == 0) continue;
      const float e = std::exp((logits[i] - mx) * inv_t);
      kept_.emplace_back(keys_[i], e);
      z += e;
    }
    const double target = double(params_.top_p) * z;
    // Groups of equal keys, largest first: a group is kept while the mass of the groups above it is < target.
    // Only as much is sorted as the walk reaches: the largest 64, then 4x more each time.
    auto by_key = [](const std::pair<uint32_t, float>& a, const std::pair<uint32_t, float>& b) { return a.first > b.first; };
    const size_t n = kept_.size();
    auto sort_more = [&](size_t from) {
      const size_t to = std::min(n, from + std::max<size_t>(64, 3 * from));
      if (to < n) std::nth_element(kept_.begin() + from, kept_.begin() + to, kept_.end(), by_key);
      std::sort(kept_.begin() + from, kept_.begin() + to, by_key);
      return to;
    };
    size_t sorted = 0, i = 0;
    double above = 0;
    uint32_t cut = 0;
    while (i < n) {
      if (i == sorted) sorted = sort_more(sorted);
      if (above >= target) break;
      const uint32_t key = kept_[i].first;
      cut = key;
      for (;;) {  // the whole group (ties may continue past what is sorted)
        if (i == sorted && sorted < n) sorted = sort_more(sorted);
        if (i >= n || kept_[i].first != key) break;
        above += kept_[i++].second;
      }
    }
    thr = std::max(thr, cut);
  }
  if (params_.min_p > 0.f) {
    const float cut = mx + params_.temperature * std::log(params_.min_p);
    thr = std::max(thr, order_key(cut));
    thr = std::min(thr, order_key(mx));  // the best token always survives
  }
  // Inverse CDF over the kept tokens in index order, in the GPU's 1024 chunks.
  constexpr int64_t kChunks = 1024;
  const int64_t cs = (vocab + kChunks - 1) / kChunks;
  float total = 0.f;
  std::vector<float> before(static_cast<size_t>(kChunks));
  for (int64_t c = 0; c < kChunks; ++c) {
    float sum = 0.f;
    for (int64_t i = c * cs; i < std::min(vocab, (c + 1) * cs); ++i)
      if (keys_[i] >= thr) sum += std::exp((logits[i] - mx) * inv_t);
    before[c] = total;
    total += sum;
  }
  const float target = philox_uniform(params_.seed, step) * total;
  for (int64_t c = 0; c < kChunks; ++c) {
    const float after = c + 1 < kChunks ? before[c + 1] : total;
    if (!(target >= before[c] && (target < after || c == kChunks - 1))) continue;
    float acc = before[c];
    int32_t pick = -1, last = -1;
    for (int64_t i = c * cs; i < std::min(vocab, (c + 1) * cs); ++i) {
      if (keys_[i] < thr) continue;
      last = static_cast<int32_t>(i);
      acc += std::exp((logits[i] - mx) * inv_t);
      if (acc > target) {
        pick = static_cast<int32_t>(i);
        break;
      }
    }
    if (pick < 0) pick = last;
    return pick >= 0 ? pick : best;
  }
  return best;
}

}  // namespace plm
