// AVX-512 paged attention (cpu/attention_paged.h). A task handles up to 16 "lanes", (query row, head) pairs
// that read the same kv head of the same sequence: 16 rows of one head in a prefill chunk, or the query heads
// sharing a kv head (GQA) of one decode row. Per 16-position chunk the keys [head_dim, 16] are loaded once and
// every lane's 16 scores are a multiply-add chain over head_dim; the softmax and P·V run per lane over that
// lane's own valid positions only, so a lane's result is the same in any group.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "cpu/attention_paged.h"
#include "cpu/exp_avx512.h"

namespace plm::cpu::kernels {
namespace {

struct Lane {
  const float* q;
  float* out;
  int64_t keys;
};

// Lanes share kv head kvh and block table `table`; n <= 16; head_dim % 16 == 0, <= 256.
void attend_lanes(const Lane* lanes, int n, const int32_t* table, int kvh, const PagedKv& kv, float scale) {
  const int hd = kv.head_dim, hv = hd / 16;
  const int64_t B = kv.block_tokens, width = int64_t(kv.kv_heads) * hd;
  alignas(64) float qs[16][256];
  alignas(64) float o[16][256];
  alignas(64) float p[16][16];
  float mx[16], sum[16];
  int64_t kmax = 0;
  for (int l = 0; l < n; ++l) {
    for (int d = 0; d < hd; ++d) qs[l][d] = lanes[l].q[d] * scale;
    for (int d = 0; d < hd; ++d) o[l][d] = 0.f;
    mx[l] = -INFINITY;
    sum[l] = 0.f;
    kmax = std::max(kmax, lanes[l].keys);
  }
  const __m512i lane_idx = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t j0 = 0; j0 < kmax; j0 += 16) {
    const int32_t block = table[j0 / B];
    const int64_t off = j0 % B;
    const float* kt = kv.keys(block) + int64_t(kvh) * hd * B + off;  // [hd][B] from position off
    const float* vb = kv.values(block) + off * width + int64_t(kvh) * hd;
    __m512 sc[16];
    for (int l = 0; l < n; ++l) sc[l] = _mm512_setzero_ps();
    for (int d = 0; d < hd; ++d) {
      const __m512 kd = _mm512_loadu_ps(kt + int64_t(d) * B);
      for (int l = 0; l < n; ++l) sc[l] = _mm512_fmadd_ps(_mm512_set1_ps(qs[l][d]), kd, sc[l]);
    }
    for (int l = 0; l < n; ++l) {
      const int64_t valid = std::min<int64_t>(16, lanes[l].keys - j0);
      if (valid <= 0) continue;
      const __mmask16 vm = _mm512_cmp_epi32_mask(lane_idx, _mm512_set1_epi32(static_cast<int>(valid)), _MM_CMPINT_LT);
      const float bmax = _mm512_reduce_max_ps(_mm512_mask_blend_ps(vm, _mm512_set1_ps(-INFINITY), sc[l]));
      const float nmax = std::max(mx[l], bmax);
      const float corr = std::exp(mx[l] - nmax);
      const __m512 e = _mm512_maskz_mov_ps(vm, exp512(_mm512_sub_ps(sc[l], _mm512_set1_ps(nmax))));
      _mm512_store_ps(p[l], e);
      sum[l] = sum[l] * corr + _mm512_reduce_add_ps(e);
      mx[l] = nmax;
      __m512 acc[16];
      if (corr != 1.f) {
        const __m512 cv = _mm512_set1_ps(corr);
        for (int c = 0; c < hv; ++c) acc[c] = _mm512_mul_ps(_mm512_load_ps(o[l] + c * 16), cv);
      } else {
        for (int c = 0; c < hv; ++c) acc[c] = _mm512_load_ps(o[l] + c * 16);
      }
      for (int64_t j = 0; j < valid; ++j) {
        const __m512 pj = _mm512_set1_ps(p[l][j]);
        const float* vr = vb + j * width;
        for (int c = 0; c < hv; ++c) acc[c] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + c * 16), acc[c]);
      }
      for (int c = 0; c < hv; ++c) _mm512_store_ps(o[l] + c * 16, acc[c]);
    }
  }
  for (int l = 0; l < n; ++l) {
    const __m512 inv = _mm512_set1_ps(1.0f / sum[l]);
    for (int c = 0; c < hv; ++c) _mm512_storeu_ps(lanes[l].out + c * 16, _mm512_mul_ps(_mm512_load_ps(o[l] + c * 16), inv));
  }
}

}  // namespace

bool attention_paged_avx512(const PagedQueries& q, const PagedKv& kv, ThreadPool* pool) {
  const int hd = kv.head_dim;
  if (hd % 16 != 0 || hd > 256 || kv.block_tokens % 16 != 0 || q.heads % kv.kv_heads != 0) return false;
  const int group = q.heads / kv.kv_heads;
  bool one_table = true;
  for (int64_t r = 1; r < q.rows && one_table; ++r) one_table = q.tables[r] == q.tables[0];
  if (one_table && q.rows > 1) {
    // Prefill chunk: tasks of (16 rows, head), head-major so consecutive tasks share a kv head's keys.
    const int64_t groups = (q.rows + 15) / 16;
    run_tasks(pool, groups * q.heads, [&](int64_t t) {
      const int h = static_cast<int>(t / groups);
      const int64_t r0 = (t % groups) * 16;
      const int n = static_cast<int>(std::min<int64_t>(16, q.rows - r0));
      Lane lanes[16];
      for (int l = 0; l < n; ++l)
        lanes[l] = {q.q + (r0 + l) * q.q_stride + int64_t(h) * hd, q.out + (r0 + l) * q.out_stride + int64_t(h) * hd,
                    q.keys[r0 + l]};
      attend_lanes(lanes, n, q.tables[0], h / group, kv, q.scale);
    });
    return true;
  }
  // Decode rows (each its own sequence): tasks of (row, kv head), the group's query heads as lanes (16 at most).
  const int per = std::min(group, 16), splits = (group + per - 1) / per;
  run_tasks(pool, q.rows * kv.kv_heads * splits, [&](int64_t t) {
    const int64_t row = t / (int64_t(kv.kv_heads) * splits);
    const int kvh = static_cast<int>((t / splits) % kv.kv_heads), s = static_cast<int>(t % splits);
    const int h0 = kvh * group + s * per, n = std::min(per, group - s * per);
    Lane lanes[16];
    for (int l = 0; l < n; ++l)
      lanes[l] = {q.q + row * q.q_stride + int64_t(h0 + l) * hd, q.out + row * q.out_stride + int64_t(h0 + l) * hd,
                  q.keys[row]};
    attend_lanes(lanes, n, q.tables[row], kvh, kv, q.scale);
  });
  return true;
}

}  // namespace plm::cpu::kernels
