// AVX-512 flash-style attention for many query rows (prefill chunks, ViT tiles), f32.
// Per task: one query head x 16 query rows. K of the kv head is pre-transposed once per call into
// Kt[kvh][d][Tk] (a copy of K, not a score matrix), so a 16-query x 16-key score block is 16 x hd broadcast
// FMAs with no horizontal sums; the online softmax runs on 16-lane vectors (Cephes-accurate exp, ~1 ulp),
// and P·V accumulates into the 16 x hd output block in L1. No [Tq, Tk] matrix exists at any time.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention.h"
#include "cpu/exp_avx512.h"

namespace plm::cpu::kernels {
namespace {


}  // namespace

// Returns false when the shape isn't covered (head_dim % 16 != 0 or > 256, fewer than 16 query rows).
bool attention_avx512(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                      ThreadPool* pool) {
  const int hd = s.head_dim;
  if (hd % 16 != 0 || hd > 256 || s.q_len < 16) return false;
  const int group = s.heads / s.kv_heads, hv = hd / 16;
  const int64_t Tk = s.kv_len, Tq = s.q_len;
  const int64_t Tkp = (Tk + 15) / 16 * 16;
  // Kt[kvh][d][Tkp], zero-padded keys.
  std::vector<float> kt(static_cast<size_t>(s.kv_heads) * hd * Tkp);
  auto transpose = [&](int64_t b, int64_t e) {
    for (int64_t j0 = b * 16; j0 < std::min(Tk, e * 16); j0 += 16)
      for (int h = 0; h < s.kv_heads; ++h)
        for (int64_t j = j0; j < std::min(Tk, j0 + 16); ++j) {
          const float* kr = k + j * s.kv_stride + int64_t(h) * hd;
          float* dst = kt.data() + (int64_t(h) * hd) * Tkp + j;
          for (int d = 0; d < hd; ++d) dst[int64_t(d) * Tkp] = kr[d];
        }
  };
  parallel_for(pool, Tkp / 16, 4, transpose);

  const int64_t qblocks = (Tq + 15) / 16;
  auto task = [&](int64_t t) {
    const int h = static_cast<int>(t % s.heads), kvh = h / group;
    const int64_t i0 = (t / s.heads) * 16, rows = std::min<int64_t>(16, Tq - i0);
    alignas(64) float o[16][256];
    alignas(64) float qs[16][256];
    alignas(64) float p[16][16];
    float mx[16], sum[16];
    int64_t limit[16];
    int64_t kmax = 0;
    for (int r = 0; r < 16; ++r) {
      const int64_t i = i0 + std::min<int64_t>(r, rows - 1);
      const float* qr = q + i * s.q_stride + int64_t(h) * hd;
      for (int d = 0; d < hd; ++d) qs[r][d] = qr[d] * s.scale;
      for (int d = 0; d < hd; ++d) o[r][d] = 0.f;
      mx[r] = -INFINITY;
      sum[r] = 0.f;
      limit[r] = s.causal ? std::min(Tk, s.q_offset + i + 1) : Tk;
      kmax = std::max(kmax, limit[r]);
    }
    const float* ktb = kt.data() + int64_t(kvh) * hd * Tkp;
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int64_t j0 = 0; j0 < kmax; j0 += 16) {
      __m512 sc[16];
      for (int r = 0; r < 16; ++r) sc[r] = _mm512_setzero_ps();
      for (int d = 0; d < hd; ++d) {
        const __m512 kv = _mm512_loadu_ps(ktb + int64_t(d) * Tkp + j0);
        for (int r = 0; r < 16; ++r) sc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r][d]), kv, sc[r]);
      }
      for (int r = 0; r < 16; ++r) {
        const int64_t valid = limit[r] - j0;
        if (valid <= 0) {
          _mm512_store_ps(p[r], _mm512_setzero_ps());
          continue;
        }
        const __mmask16 vm = _mm512_cmp_epi32_mask(lane, _mm512_set1_epi32(static_cast<int>(std::min<int64_t>(valid, 16))), _MM_CMPINT_LT);
        const __m512 scm = _mm512_mask_blend_ps(vm, _mm512_set1_ps(-INFINITY), sc[r]);
        const float bmax = _mm512_reduce_max_ps(scm);
        const float nmax = std::max(mx[r], bmax);
        const float corr = std::exp(mx[r] - nmax);
        const __m512 e = _mm512_maskz_mov_ps(vm, exp512(_mm512_sub_ps(sc[r], _mm512_set1_ps(nmax))));
        _mm512_store_ps(p[r], e);
        sum[r] = sum[r] * corr + _mm512_reduce_add_ps(e);
        mx[r] = nmax;
        if (corr != 1.f) {
          const __m512 cv = _mm512_set1_ps(corr);
          for (int c = 0; c < hv; ++c) _mm512_store_ps(o[r] + c * 16, _mm512_mul_ps(_mm512_load_ps(o[r] + c * 16), cv));
        }
      }
      const int64_t jn = std::min<int64_t>(16, kmax - j0);
      for (int r = 0; r < 16; ++r) {
        __m512 acc[16];
        for (int c = 0; c < hv; ++c) acc[c] = _mm512_load_ps(o[r] + c * 16);
        for (int64_t j = 0; j < jn; ++j) {
          const __m512 pj = _mm512_set1_ps(p[r][j]);
          const float* vr = v + (j0 + j) * s.kv_stride + int64_t(kvh) * hd;
          for (int c = 0; c < hv; ++c) acc[c] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vr + c * 16), acc[c]);
        }
        for (int c = 0; c < hv; ++c) _mm512_store_ps(o[r] + c * 16, acc[c]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = out + (i0 + r) * s.out_row_stride() + int64_t(h) * hd;
      const __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
      for (int c = 0; c < hv; ++c) _mm512_storeu_ps(dst + c * 16, _mm512_mul_ps(_mm512_load_ps(o[r] + c * 16), inv));
    }
  };
  const int64_t tasks = qblocks * s.heads;
  run_tasks(pool, tasks, task);
  return true;
}

}  // namespace plm::cpu::kernels
