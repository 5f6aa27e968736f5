// CPU attention kernels against references on random inputs, then one timing of the ViT shape.
//
//   plm_attention_test [--threads N] [--no-timing]
//   PLM_CPU_ISA=avx2 plm_attention_test     # a lower ISA level's kernels (cpu/cpu_features.h)
//
// Each case checks attention() in Precision::kF32 (the f32 kernel of this ISA level: AVX-512, AVX2 or the
// portable loop) against plain attention in double, max |f32 - ref| / max(1, max |ref|) <= 1e-4; then
// Precision::kBF16 (the AMX flash kernel where the CPU has AMX-BF16, the AVX512-BF16 one where it has only that,
// the f32 kernels elsewhere) against the kF32 output on the same q, k, v, max |bf16 - f32| / max(1, max |f32|)
// <= 2e-2 (Q, K, V and P rounded to bf16; 4e-2 where scores reach ~40). Output is poisoned with NaN first, so
// an unwritten element fails.
// Last line "N passed, M failed"; exit code 1 on any failure. The timing line is informational.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/half.h"
#include "core/thread_pool.h"
#include "cpu/attention.h"
#include "cpu/attention_paged.h"

using namespace plm;

namespace {

struct Case {
  int64_t q_len, kv_len;
  int heads, kv_heads, head_dim;
  bool causal;
  int64_t q_offset;
  float q_scale = 2.f;  // q ~ N(0, q_scale^2): 2 gives scores up to ~8; 10 makes |q||k| a loose bound
  double bound = 2e-2;  // x10: scores up to ~40, where rounding Q and K to bf16 alone moves a score by ~0.1
};

cpu::AttentionShape shape_of(const Case& c) {
  cpu::AttentionShape s;
  s.q_len = c.q_len;
  s.kv_len = c.kv_len;
  s.heads = c.heads;
  s.kv_heads = c.kv_heads;
  s.head_dim = c.head_dim;
  s.q_stride = int64_t(c.heads) * c.head_dim;
  s.kv_stride = int64_t(c.kv_heads) * c.head_dim;
  s.scale = 1.f / std::sqrt(float(c.head_dim));
  s.causal = c.causal;
  s.q_offset = c.q_offset;
  return s;
}

// softmax(q k^T * scale) v per (row, head) in double, with the causal limits: the reference of the f32 kernels.
std::vector<double> reference_attention(const std::vector<float>& q, const std::vector<float>& k,
                                        const std::vector<float>& v, const cpu::AttentionShape& s) {
  const int hd = s.head_dim, group = s.heads / s.kv_heads;
  std::vector<double> out(size_t(s.q_len) * s.q_stride, 0.0), sc(size_t(s.kv_len));
  for (int64_t i = 0; i < s.q_len; ++i)
    for (int h = 0; h < s.heads; ++h) {
      const int64_t keys = s.causal ? std::min(s.kv_len, s.q_offset + i + 1) : s.kv_len;
      const float* qi = q.data() + i * s.q_stride + int64_t(h) * hd;
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < keys; ++j) {
        const float* kj = k.data() + j * s.kv_stride + int64_t(h / group) * hd;
        double d = 0;
        for (int c = 0; c < hd; ++c) d += double(qi[c]) * kj[c];
        sc[size_t(j)] = d * s.scale;
        mx = std::max(mx, sc[size_t(j)]);
      }
      double* o = out.data() + i * s.q_stride + int64_t(h) * hd;
      for (int64_t j = 0; j < keys; ++j) {
        const double p = std::exp(sc[size_t(j)] - mx);
        sum += p;
        const float* vj = v.data() + j * s.kv_stride + int64_t(h / group) * hd;
        for (int c = 0; c < hd; ++c) o[c] += p * vj[c];
      }
      for (int c = 0; c < hd; ++c) o[c] /= sum;
    }
  return out;
}

// f32 attention (any kernel) against the double reference: f32 rounding of scores up to ~40, exp and sums.
constexpr double kF32Bound = 1e-4;

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  bool timing = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--no-timing")) timing = false;
  }
  ThreadPool pool(threads);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  const Case cases[] = {
      {1025, 1025, 16, 16, 64, false, 0},  // PE-L tile
      {1024, 1024, 16, 16, 96, false, 0},  // PE-G tile (no CLS)
      {65, 65, 2, 2, 32, false, 0},        {16, 16, 2, 2, 64, false, 0},  {31, 95, 2, 1, 64, false, 0},
      {17, 40, 4, 2, 64, true, 23},        {130, 130, 8, 2, 64, true, 0},  // causal GQA
      {77, 177, 4, 1, 128, true, 100},     {500, 500, 32, 8, 64, true, 0}, {33, 33, 4, 4, 32, true, 0},
      {200, 200, 4, 2, 64, false, 0, 10.f, 4e-2},  {90, 150, 4, 4, 32, true, 60, 10.f, 4e-2},  // online fallback
      // grouped heads over several 512-key chunks (a partial last one, causal rows ending mid-chunk, a padded
      // last row block); x10: some rows fall back to online
      {300, 2500, 8, 2, 64, true, 2200},    {97, 2100, 12, 3, 64, false, 0},
      {40, 2300, 8, 2, 64, true, 2260, 10.f, 4e-2},
  };
  int passed = 0, failed = 0;
  for (const Case& c : cases) {
    const cpu::AttentionShape s = shape_of(c);
    std::vector<float> q(size_t(c.q_len) * s.q_stride), k(size_t(c.kv_len) * s.kv_stride), v(k.size());
    for (auto& x : q) x = c.q_scale * nd(rng);
    for (auto& x : k) x = nd(rng);
    for (auto& x : v) x = nd(rng);
    std::vector<float> ref(q.size(), NAN), got(q.size(), NAN);
    cpu::attention(q.data(), k.data(), v.data(), ref.data(), s, &pool, cpu::Precision::kF32);
    cpu::attention(q.data(), k.data(), v.data(), got.data(), s, &pool, cpu::Precision::kBF16);
    // The f32 kernel of this ISA level against plain attention in double (two passes over the keys per row).
    {
      const std::vector<double> exact = reference_attention(q, k, v, s);
      double err = 0, scale = 0;
      for (size_t i = 0; i < exact.size(); ++i) {
        const double d = std::fabs(double(ref[i]) - exact[i]);
        err = std::isfinite(d) ? std::max(err, d) : INFINITY;
        scale = std::max(scale, std::fabs(exact[i]));
      }
      const double rel = err / std::max(1.0, scale);
      const bool ok = rel <= kF32Bound;
      (ok ? passed : failed)++;
      std::printf("%-4s   f32 kernel vs double reference: err %.3e bound %.0e\n", ok ? "ok" : "FAIL", rel, kF32Bound);
    }
    double err = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double d = std::fabs(double(got[i]) - double(ref[i]));
      err = std::isfinite(d) ? std::max(err, d) : INFINITY;
      scale = std::max(scale, double(std::fabs(ref[i])));
    }
    const double rel = err / std::max(1.0, scale);
    const bool ok = rel <= c.bound;
    (ok ? passed : failed)++;
    std::printf("%-4s q %4lld kv %4lld heads %2d/%2d hd %3d %s offset %3lld q x%-4g: err %.3e bound %.0e\n",
                ok ? "ok" : "FAIL", (long long)c.q_len, (long long)c.kv_len, c.heads, c.kv_heads, c.head_dim,
                c.causal ? "causal" : "bidir ", (long long)c.q_offset, double(c.q_scale), rel, c.bound);
    // The same attention written as bf16 tiles (AttentionShape::out_tiles) at a row offset that is not a multiple
    // of 16 (a second ViT tile starts at row 1025): bf16 of the f32 output, bit for bit; the rows before the
    // offset untouched and the padding rows zero.
    if (cpu::attention_tiles_available(cpu::Precision::kBF16, s)) {
      const int64_t row0 = 1025, K = s.q_stride, M = row0 + c.q_len, Mp = (M + 31) / 32 * 32;
      cpu::TileActivations act;
      act.resize(M, K);
      auto at = [&](int64_t m, int64_t j) -> uint16_t& {
        return act.data()[((m / 16) * (K / 32) + j / 32) * 512 + (m % 16) * 32 + j % 32];
      };
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < K; ++j) at(m, j) = 0x7fc1;  // NaN: every row must be written or left alone
      cpu::AttentionShape st = s;
      st.out_tiles = act.data();
      st.out_tiles_row0 = row0;
      cpu::attention(q.data(), k.data(), v.data(), nullptr, st, &pool, cpu::Precision::kBF16);
      int64_t bad = 0;
      for (int64_t m = 0; m < Mp; ++m)
        for (int64_t j = 0; j < K; ++j) {
          const uint16_t want = m < row0 ? 0x7fc1 : m < M ? f32_to_bf16(got[size_t((m - row0) * K + j)]) : 0;
          bad += at(m, j) != want;
        }
      (bad == 0 ? passed : failed)++;
      std::printf("%-4s   the same into bf16 tiles at row %lld: %s\n", bad == 0 ? "ok" : "FAIL", (long long)row0,
                  bad == 0 ? "bit-identical to bf16 of the f32 output" : "DIFFERS from bf16 of the f32 output");
    }
  }
  // Paged attention (the decoder's, over KV blocks): equal to the dense causal kernel within 1e-5 of the output
  // scale, and every (row, head) bit-identical whether computed in a whole prefill, alone, or as one decode row
  // among rows of other sequences (shuffled block tables).
  {
    struct PagedCase { int heads, kv_heads, head_dim; int64_t T; };
    for (const PagedCase& c : {PagedCase{8, 2, 64, 100}, PagedCase{4, 2, 16, 70}, PagedCase{6, 3, 24, 45},
                               PagedCase{4, 4, 128, 37}, PagedCase{32, 8, 64, 300}}) {
      const int64_t B = 32, blocks = (c.T + B - 1) / B, width = int64_t(c.kv_heads) * c.head_dim;
      const int64_t qw = int64_t(c.heads) * c.head_dim;
      std::vector<float> k(size_t(c.T * width)), v(k.size()), q(size_t(c.T * qw));  // [T, width], [T, qw]
      for (auto* b : {&q, &k, &v})
        for (auto& x : *b) x = nd(rng);
      // A pool of 2 * blocks blocks (one layer), the sequence's table a shuffled subset.
      std::vector<float> pool_mem(size_t(2 * blocks * 2 * B * width), NAN);
      std::vector<int32_t> table(size_t(2 * blocks));
      for (size_t i = 0; i < table.size(); ++i) table[i] = int32_t(i);
      std::shuffle(table.begin(), table.end(), rng);
      table.resize(size_t(blocks));
      cpu::PagedKv kv{pool_mem.data(), 2 * B * width, 0, B * width, B, c.kv_heads, c.head_dim};
      cpu::store_kv_rows(k.data(), v.data(), c.T, 0, table.data(), kv, pool_mem.data());
      std::vector<float> dense(q.size()), paged(q.size(), NAN), single(q.size(), NAN);
      cpu::AttentionShape s;
      s.q_len = c.T;
      s.kv_len = c.T;
      s.heads = c.heads;
      s.kv_heads = c.kv_heads;
      s.head_dim = c.head_dim;
      s.q_stride = qw;
      s.kv_stride = width;
      s.scale = 1.f / std::sqrt(float(c.head_dim));
      s.causal = true;
      cpu::attention(q.data(), k.data(), v.data(), dense.data(), s, &pool);
      std::vector<const int32_t*> tables(size_t(c.T), table.data());
      std::vector<int64_t> keys(size_t(c.T));
      for (int64_t i = 0; i < c.T; ++i) keys[size_t(i)] = i + 1;
      cpu::attention_paged({q.data(), qw, paged.data(), qw, c.T, c.heads, s.scale, tables.data(), keys.data()}, kv, &pool);
      for (int64_t i = 0; i < c.T; ++i)  // each row alone
        cpu::attention_paged({q.data() + i * qw, qw, single.data() + i * qw, qw, 1, c.heads, s.scale, tables.data(), &keys[size_t(i)]},
                             kv, &pool);
      // Decode rows: every other row as if from a different sequence (the table copied elsewhere), together.
      std::vector<std::vector<int32_t>> copies;
      std::vector<const int32_t*> mixed;
      std::vector<float> qrows, drows;
      std::vector<int64_t> dkeys;
      for (int64_t i = 0; i < c.T; i += 2) {
        copies.push_back(table);
        qrows.insert(qrows.end(), q.begin() + i * qw, q.begin() + (i + 1) * qw);
        dkeys.push_back(i + 1);
      }
      for (auto& t : copies) mixed.push_back(t.data());
      drows.assign(qrows.size(), NAN);
      cpu::attention_paged({qrows.data(), qw, drows.data(), qw, int64_t(dkeys.size()), c.heads, s.scale, mixed.data(), dkeys.data()},
                           kv, &pool);
      double err = 0, scale = 1;
      for (size_t i = 0; i < dense.size(); ++i) {
        err = std::max(err, double(std::fabs(paged[i] - dense[i])));
        if (!std::isfinite(paged[i])) err = INFINITY;
        scale = std::max(scale, double(std::fabs(dense[i])));
      }
      bool same = std::memcmp(paged.data(), single.data(), paged.size() * 4) == 0;
      for (size_t r = 0; r < dkeys.size(); ++r)
        same = same && std::memcmp(drows.data() + r * qw, paged.data() + 2 * r * qw, size_t(qw) * 4) == 0;
      const bool ok = err / scale <= 1e-5 && same;
      (ok ? passed : failed)++;
      std::printf("%-4s paged T=%-4lld heads %2d/%d hd %3d: max err vs dense %.2e (bound 1e-5); rows %s\n", ok ? "ok" : "FAIL",
                  (long long)c.T, c.heads, c.kv_heads, c.head_dim, err / scale,
                  same ? "bit-identical alone, in the prefill and as decode rows" : "DIFFER between groupings");
    }
  }
  if (timing) {  // timing, PE-L tile (informational)
    const cpu::AttentionShape s = shape_of(cases[0]);
    std::vector<float> q(size_t(s.q_len) * s.q_stride), k(q.size()), v(q.size()), o(q.size());
    for (auto* b : {&q, &k, &v})
      for (auto& x : *b) x = nd(rng);
    std::vector<double> ms;
    for (int r = 0; r < 7; ++r) {
      const auto a = std::chrono::steady_clock::now();
      cpu::attention(q.data(), k.data(), v.data(), o.data(), s, &pool, cpu::Precision::kBF16);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(ms.begin(), ms.end());
    const double flops = 4.0 * double(s.q_len) * double(s.kv_len) * s.head_dim * s.heads;
    std::printf("time bf16 PE-L tile attention (1025 x 16 heads x 64), %d threads: %.2f ms, %.1f GFLOP/s (median of 7)\n",
                threads, ms[3], flops / ms[3] / 1e6);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
