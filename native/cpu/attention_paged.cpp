// Portable paged attention (every CPU) and the dispatch to the AVX-512 kernel. Same structure as the AVX-512
// kernel: 16-position chunks in order, online softmax per chunk; each (row, head) on its own.
#include "cpu/attention_paged.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_features.h"

namespace plm::cpu {
namespace kernels {
bool attention_paged_avx512(const PagedQueries& q, const PagedKv& kv, ThreadPool* pool);
}  // namespace kernels

namespace {

void attend_row_portable(const PagedQueries& qs, const PagedKv& kv, int64_t row, int head) {
  const int hd = kv.head_dim, group = qs.heads / kv.kv_heads, kvh = head / group;
  const int64_t B = kv.block_tokens, limit = qs.keys[row];
  const float* q = qs.q + row * qs.q_stride + int64_t(head) * hd;
  float* out = qs.out + row * qs.out_stride + int64_t(head) * hd;
  const int32_t* table = qs.tables[row];
  thread_local std::vector<float> qsc, acc;
  qsc.resize(hd);
  acc.assign(hd, 0.f);
  for (int d = 0; d < hd; ++d) qsc[d] = q[d] * qs.scale;
  float mx = -INFINITY, sum = 0.f;
  float sc[16];
  for (int64_t j0 = 0; j0 < limit; j0 += 16) {
    const int32_t block = table[j0 / B];
    const int64_t off = j0 % B;
    const float* kt = kv.keys(block) + int64_t(kvh) * hd * B + off;  // [hd][B] from position off
    const float* vb = kv.values(block) + off * kv.kv_heads * hd + int64_t(kvh) * hd;
    const int valid = static_cast<int>(std::min<int64_t>(16, limit - j0));
    float bmax = -INFINITY;
    for (int j = 0; j < valid; ++j) {
      float s = 0.f;
      for (int d = 0; d < hd; ++d) s += qsc[d] * kt[int64_t(d) * B + j];
      sc[j] = s;
      bmax = std::max(bmax, s);
    }
    const float nmax = std::max(mx, bmax);
    const float corr = std::exp(mx - nmax);
    float bsum = 0.f;
    for (int j = 0; j < valid; ++j) bsum += sc[j] = std::exp(sc[j] - nmax);
    sum = sum * corr + bsum;
    mx = nmax;
    if (corr != 1.f)
      for (int d = 0; d < hd; ++d) acc[d] *= corr;
    for (int j = 0; j < valid; ++j) {
      const float* vr = vb + int64_t(j) * kv.kv_heads * hd;
      for (int d = 0; d < hd; ++d) acc[d] += sc[j] * vr[d];
    }
  }
  const float inv = 1.0f / sum;
  for (int d = 0; d < hd; ++d) out[d] = acc[d] * inv;
}

}  // namespace

void attention_paged(const PagedQueries& q, const PagedKv& kv, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = cpu_features().avx512f && cpu_features().avx512dq;
  if (avx512 && kernels::attention_paged_avx512(q, kv, pool)) return;
#endif
  parallel_for(pool, q.rows * q.heads, 4, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) attend_row_portable(q, kv, t / q.heads, static_cast<int>(t % q.heads));
  });
}

void store_kv_rows(const float* k, const float* v, int64_t n, int64_t pos0, const int32_t* table, const PagedKv& kv,
                   float* base) {
  const int64_t B = kv.block_tokens, width = int64_t(kv.kv_heads) * kv.head_dim;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t p = pos0 + r, slot = p % B;
    float* kb = base + table[p / B] * kv.block_stride + kv.layer_offset;  // [width][B]
    float* vb = kb + kv.value_offset + slot * width;                      // [B][width]
    const float* kr = k + r * width;
    for (int64_t c = 0; c < width; ++c) kb[c * B + slot] = kr[c];
    std::copy(v + r * width, v + (r + 1) * width, vb);
  }
}

}  // namespace plm::cpu
