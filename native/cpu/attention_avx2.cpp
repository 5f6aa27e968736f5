// AVX2+FMA flash attention for many query rows (prefill chunks, ViT tiles), f32, on CPUs without AVX-512:
// attention_avx512.cpp's scheme on 8 lanes. Per task: one query head x 8 query rows. K of each kv head is
// transposed once per call into Kt[kvh][d][Tkp] (a copy of K, not a score matrix), so an 8-query x 8-key score
// block is hd broadcast FMAs into 8 accumulators; the online softmax runs on 8-lane vectors (Cephes exp,
// ~1 ulp), and P·V accumulates into the 8 x hd output block in L1. No [Tq, Tk] matrix exists at any time.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention.h"

namespace plm::cpu::kernels {
namespace {

// Cephes expf on 8 lanes (exp_avx512.h's arithmetic): exp(x) = 2^n * exp(r), |r| <= ln2/2; ~1 ulp on [-87, 88],
// 0 below.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n: n (in [-126, 128] after the clamp) into the exponent field; n = 128 (x near 88.7) as 2 * 2^127.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i big = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, _mm256_and_si256(big, _mm256_set1_epi32(1))),
                                                        _mm256_set1_epi32(127)), 23);
  __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  res = _mm256_blendv_ps(res, _mm256_add_ps(res, res), _mm256_castsi256_ps(big));
  return _mm256_andnot_ps(under, res);
}

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes 0 .. n-1 of 8 (n clamped to [0, 8]) as an all-ones mask.
inline __m256 first_lanes(int64_t n) {
  const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  const int c = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, n)));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(c), lane));
}

// o[0 .. 8 NC) += sum over j < jn of p[j] * v[j][0 .. 8 NC) (v rows kv_stride apart): one query row's P·V.
template <int NC>
inline void pv_row(const float* p, int64_t jn, const float* v, int64_t kv_stride, float* o) {
  __m256 acc[NC];
  for (int c = 0; c < NC; ++c) acc[c] = _mm256_load_ps(o + c * 8);
  for (int64_t j = 0; j < jn; ++j) {
    const __m256 pj = _mm256_broadcast_ss(p + j);
    const float* vr = v + j * kv_stride;
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vr + c * 8), acc[c]);
  }
  for (int c = 0; c < NC; ++c) _mm256_store_ps(o + c * 8, acc[c]);
}

}  // namespace

// Returns false when the shape isn't covered (head_dim % 8 != 0 or > 256, fewer than 8 query rows).
bool attention_avx2(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                    ThreadPool* pool) {
  const int hd = s.head_dim;
  if (hd % 8 != 0 || hd > 256 || s.q_len < 8 || s.kv_len <= 0) return false;
  const int group = s.heads / s.kv_heads, hv = hd / 8;
  const int64_t Tk = s.kv_len, Tq = s.q_len;
  const int64_t Tkp = (Tk + 7) / 8 * 8;
  // Kt[kvh][d][Tkp], zero-padded keys.
  std::vector<float> kt(static_cast<size_t>(s.kv_heads) * hd * Tkp, 0.f);
  parallel_for(pool, Tkp / 8, 8, [&](int64_t b, int64_t e) {
    for (int h = 0; h < s.kv_heads; ++h)
      for (int64_t j = b * 8; j < std::min(Tk, e * 8); ++j) {
        const float* kr = k + j * s.kv_stride + int64_t(h) * hd;
        float* dst = kt.data() + (int64_t(h) * hd) * Tkp + j;
        for (int d = 0; d < hd; ++d) dst[int64_t(d) * Tkp] = kr[d];
      }
  });

  const int64_t qblocks = (Tq + 7) / 8;
  auto task = [&](int64_t t) {
    const int h = static_cast<int>(t / qblocks), kvh = h / group;  // head-major: a head's K, V stay in L2
    const int64_t i0 = (t % qblocks) * 8, rows = std::min<int64_t>(8, Tq - i0);
    alignas(32) float o[8][256];
    alignas(32) float qs[8][256];
    alignas(32) float p[8][8];
    float mx[8], sum[8];
    int64_t limit[8];
    int64_t kmax = 0;
    for (int r = 0; r < 8; ++r) {
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
    for (int64_t j0 = 0; j0 < kmax; j0 += 8) {
      __m256 sc[8];
      for (int r = 0; r < 8; ++r) sc[r] = _mm256_setzero_ps();
      for (int d = 0; d < hd; ++d) {
        const __m256 kv = _mm256_loadu_ps(ktb + int64_t(d) * Tkp + j0);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) sc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&qs[r][d]), kv, sc[r]);
      }
      for (int r = 0; r < 8; ++r) {
        const int64_t valid = limit[r] - j0;
        if (valid <= 0) {
          _mm256_store_ps(p[r], _mm256_setzero_ps());
          continue;
        }
        const __m256 vm = first_lanes(valid);
        const __m256 scm = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), sc[r], vm);
        const float nmax = std::max(mx[r], hmax8(scm));
        const float corr = std::exp(mx[r] - nmax);
        const __m256 e = _mm256_and_ps(vm, exp8(_mm256_sub_ps(sc[r], _mm256_set1_ps(nmax))));
        _mm256_store_ps(p[r], e);
        sum[r] = sum[r] * corr + hsum8(e);
        mx[r] = nmax;
        if (corr != 1.f) {
          const __m256 cv = _mm256_set1_ps(corr);
          for (int c = 0; c < hv; ++c) _mm256_store_ps(o[r] + c * 8, _mm256_mul_ps(_mm256_load_ps(o[r] + c * 8), cv));
        }
      }
      const int64_t jn = std::min<int64_t>(8, kmax - j0);
      for (int r = 0; r < 8; ++r)
        for (int c = 0; c < hv;) {  // up to 8 vectors (64 columns) of the row at a time
          const float* vb = v + j0 * s.kv_stride + int64_t(kvh) * hd + c * 8;
          const int left = hv - c;
          if (left >= 8) pv_row<8>(p[r], jn, vb, s.kv_stride, o[r] + c * 8), c += 8;
          else if (left >= 4) pv_row<4>(p[r], jn, vb, s.kv_stride, o[r] + c * 8), c += 4;
          else if (left >= 2) pv_row<2>(p[r], jn, vb, s.kv_stride, o[r] + c * 8), c += 2;
          else pv_row<1>(p[r], jn, vb, s.kv_stride, o[r] + c * 8), c += 1;
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = out + (i0 + r) * s.out_row_stride() + int64_t(h) * hd;
      const __m256 inv = _mm256_set1_ps(1.0f / sum[r]);
      for (int c = 0; c < hv; ++c) _mm256_storeu_ps(dst + c * 8, _mm256_mul_ps(_mm256_load_ps(o[r] + c * 8), inv));
    }
  };
  run_tasks(pool, qblocks * s.heads, task);
  return true;
}

}  // namespace plm::cpu::kernels
