// The token sampler (model/sampler.h) against its definition, on random logits:
//   plm_sampler_test
// - Philox4x32-10 gives the published known answer for key 0, counter 0;
// - greedy is the first maximal index; top-k 1, a tiny top-p and min-p 1 keep only the maximum (ties kept);
// - for random logits with ties and random (temperature, top-k, top-p, min-p), every draw lies in the kept set
//   computed here by sorting (the definition), and the draw frequencies over 20,000 steps match the kept set's
//   softmax within 4 standard errors;
// - draws depend only on (seed, step): the same pair gives the same token, whatever was drawn before.
// Exits 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "core/philox.h"
#include "model/sampler.h"

using namespace plm;

namespace {

int failures = 0, checks = 0;
void check(bool ok, const char* what, const std::string& detail = "") {
  ++checks;
  if (!ok) ++failures;
  std::printf("%-4s %s%s%s\n", ok ? "ok" : "FAIL", what, detail.empty() ? "" : ": ", detail.c_str());
}

// The kept set by the definition: sort, cut.
std::set<int> kept_by_definition(const std::vector<float>& l, const SamplingParams& p) {
  const int V = static_cast<int>(l.size());
  std::vector<int> order(V);
  for (int i = 0; i < V; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  const float mx = l[order[0]];
  float thr = -INFINITY;
  if (p.top_k > 0 && p.top_k < V) thr = l[order[p.top_k - 1]];
  if (p.top_p > 0.f && p.top_p < 1.f) {
    std::vector<int> k;
    double z = 0;
    for (int i : order)
      if (l[i] >= thr) {
        k.push_back(i);
        z += std::exp((l[i] - mx) * (1.f / p.temperature));
      }
    double above = 0;
    float cut = l[k[0]];
    for (size_t j = 0; j < k.size();) {
      if (above >= p.top_p * z) break;
      cut = l[k[j]];
      while (j < k.size() && l[k[j]] == cut) above += std::exp((l[k[j++]] - mx) * (1.f / p.temperature));
    }
    thr = std::max(thr, cut);
  }
  if (p.min_p > 0.f) thr = std::min(mx, std::max(thr, mx + p.temperature * std::log(p.min_p)));
  std::set<int> out;
  for (int i = 0; i < V; ++i)
    if (l[i] >= thr) out.insert(i);
  return out;
}

}  // namespace

int main() {
  check(philox4x32_10(0, 0) == 0x6627e8d5u, "Philox4x32-10 known answer (key 0, counter 0) = 0x6627e8d5");
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 2.f);
  const std::vector<int32_t> none;
  {
    std::vector<float> l(1000);
    for (auto& v : l) v = nd(rng);
    l[700] = l[900] = 30.f;
    SamplingParams g;
    std::vector<float> c = l;
    check(Sampler(g).sample(c.data(), 1000, none, 0) == 700, "greedy: first maximal index");
    int hits[2] = {0, 0};
    for (uint64_t s = 0; s < 200; ++s) {
      SamplingParams k1;
      k1.temperature = 1.5f;
      k1.top_k = 1;
      k1.seed = 9;
      c = l;
      const int32_t t = Sampler(k1).sample(c.data(), 1000, none, s);
      hits[0] += t == 700;
      hits[1] += t == 900;
    }
    check(hits[0] + hits[1] == 200 && hits[0] > 0 && hits[1] > 0, "top_k 1 keeps both tied maxima and nothing else");
    l[900] = 29.f;
    bool only_max = true;
    for (uint64_t s = 0; s < 200; ++s) {
      SamplingParams tp;
      tp.temperature = 1.f;
      tp.top_p = 1e-6f;
      SamplingParams mp;
      mp.temperature = 3.f;
      mp.min_p = 1.f;
      c = l;
      only_max = only_max && Sampler(tp).sample(c.data(), 1000, none, s) == 700;
      c = l;
      only_max = only_max && Sampler(mp).sample(c.data(), 1000, none, s) == 700;
    }
    check(only_max, "a tiny top_p and min_p 1 keep only the maximum");
  }
  for (int trial = 0; trial < 12; ++trial) {
    const int V = 40 + trial * 7;
    std::vector<float> l(V);
    for (auto& v : l) v = std::round(nd(rng) * 4.f) / 4.f;  // coarse values: many ties
    SamplingParams p;
    p.temperature = 0.5f + 0.25f * (trial % 4);
    p.top_k = trial % 3 == 0 ? 0 : 3 + trial;
    p.top_p = trial % 2 == 0 ? 1.f : 0.5f + 0.04f * trial;
    p.min_p = trial % 5 == 0 ? 0.05f : 0.f;
    p.seed = 1000 + trial;
    const std::set<int> kept = kept_by_definition(l, p);
    double z = 0;
    const float mx = *std::max_element(l.begin(), l.end());
    for (int i : kept) z += std::exp((l[i] - mx) / p.temperature);
    std::vector<int> count(V, 0);
    const int draws = 20000;
    bool inside = true, repeat = true;
    Sampler sampler(p);
    for (int s = 0; s < draws; ++s) {
      std::vector<float> c = l;
      const int32_t t = sampler.sample(c.data(), V, none, static_cast<uint64_t>(s));
      inside = inside && kept.count(t);
      if (t >= 0 && t < V) count[t]++;
      if (s % 997 == 0) {  // the same (seed, step) again, from a fresh sampler: the same token
        c = l;
        repeat = repeat && Sampler(p).sample(c.data(), V, none, static_cast<uint64_t>(s)) == t;
      }
    }
    double worst = 0;
    for (int i = 0; i < V; ++i) {
      const double q = kept.count(i) ? std::exp((l[i] - mx) / p.temperature) / z : 0.0;
      const double se = std::sqrt(std::max(q * (1 - q), 1e-12) / draws);
      worst = std::max(worst, std::fabs(count[i] / double(draws) - q) / se);
    }
    char what[160];
    std::snprintf(what, sizeof what, "V=%d T=%.2f top_k=%d top_p=%.2f min_p=%.2f: %zu kept", V, p.temperature, p.top_k,
                  p.top_p, p.min_p, kept.size());
    char detail[120];
    std::snprintf(detail, sizeof detail, "draws inside the kept set %s, same (seed, step) same token %s, worst %.1f SE",
                  inside ? "yes" : "NO", repeat ? "yes" : "NO", worst);
    check(inside && repeat && worst < 4.5, what, detail);
  }
  std::printf("%d of %d checks passed\n", checks - failures, checks);
  return failures ? 1 : 0;
}
