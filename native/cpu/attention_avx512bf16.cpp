// AVX512-BF16 flash attention for many query rows (ViT tiles, prefill chunks) in precision "bf16" on CPUs
// without AMX: the AMX kernel's arithmetic (attention_amx.cpp) with vdpbf16ps instead of tiles.
//
// Q (pre-scaled by scale * log2(e)), K and V are rounded to bf16; S = Q·K^T and O += P·V accumulate in f32; the
// softmax runs in f32 in base 2. Per task: 16 query rows of one query head, over the keys in blocks of kBlock:
//   S [16][kBlock] f32 (8 rows x 32 keys per pass: 16 accumulators, 2 K vectors + 8 Q broadcasts per d pair),
//   P = 2^(S - m) rounded to bf16 [16][kBlock], O [16][hd] f32 += P·V (4 rows x 64 columns per pass).
// m is a fixed reference (the AMX kernel's): every score of row i is at most B_i = |q_i| * max_j |k_j| (Cauchy-
// Schwarz), so with m = B_i no running max and no rescaling of O is needed; a row whose sum comes out below
// 1e-20 (its bound far above its real max) sends the task to the online softmax (running max per block, O
// rescaled), which is also used where the bound cannot be trusted to stay close (head_dim > 64, as on AMX).
// No [Tq, Tk] matrix exists at any time.
//
// Layouts (bf16, packed once per call and per kv head, as the AMX kernel's):
//   Kp[kvh][hd/2][Tkp][2]: row p holds the pair (K[j][2p], K[j][2p+1]) of every key j: 16 keys per vector.
//   Vp[kvh][Tkp/2][hd][2]: row q holds the pair (V[2q][c], V[2q+1][c]) of every column c: 16 columns per vector.
// Keys past Tk are zero in both and masked out of P, so padding never produces NaN.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "core/align.h"
#include "cpu/attention.h"
#include "cpu/tiles_avx512.h"

namespace plm::cpu::kernels {
namespace {

constexpr int kBlock = 128;  // keys per block: S and P of 16 rows stay in L1 (8 + 4 KiB)

// 2^t for t <= 0 to 7.5e-5 relative, lanes outside `keep` exactly 0 (attention_amx.cpp's exp2_nonpos: far below
// P's bf16 rounding, 2^-9).
inline __m512 exp2_nonpos(__m512 t, __mmask16 keep) {
  const __m512 r = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor(t)
  __m512 p = _mm512_set1_ps(0.07802440094f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.2260673287f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.6958334809f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.9999252214f));
  return _mm512_maskz_scalef_ps(keep, p, t);  // p * 2^floor(t)
}

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

inline __m512bh bcast_pair(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(v);
}

// sc[r][0..31] = Q[r0 + r] · K[j0 .. j0+31] for 8 rows: qs [16][hd] bf16, kh the kv head's Kp (row stride Tkp).
inline void scores8x32(const uint16_t* qs, int hd, const uint16_t* kh, int64_t Tkp, int64_t j0, int r0, float* sc) {
  __m512 a0[8], a1[8];
  for (int r = 0; r < 8; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  const uint16_t* kb = kh + j0 * 2;
  for (int p = 0; p < hd / 2; ++p) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kb + p * Tkp * 2);
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kb + p * Tkp * 2 + 32);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) {
      const __m512bh q = bcast_pair(qs + (r0 + r) * hd + p * 2);
      a0[r] = _mm512_dpbf16_ps(a0[r], q, k0);
      a1[r] = _mm512_dpbf16_ps(a1[r], q, k1);
    }
  }
  for (int r = 0; r < 8; ++r) {
    _mm512_store_ps(sc + (r0 + r) * kBlock, a0[r]);
    _mm512_store_ps(sc + (r0 + r) * kBlock + 16, a1[r]);
  }
}

// o[r0 + r][c0 .. c0 + 16 NC) += P[r0 + r][0 .. jn) · V[j0 .. j0 + jn)[...] for 4 rows: p [16][kBlock] bf16, vh the
// kv head's Vp (row stride hd pairs). o [16][hd] f32.
template <int NC>
inline void pv4(const uint16_t* p, int64_t jn, const uint16_t* vh, int hd, int64_t j0, int r0, int c0, float* o) {
  __m512 acc[4][NC];
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_load_ps(o + (r0 + r) * hd + c0 + c * 16);
  const uint16_t* vb = vh + ((j0 / 2) * hd + c0) * 2;
  for (int64_t q = 0; q < jn / 2; ++q) {
    __m512bh v[NC];
    for (int c = 0; c < NC; ++c) v[c] = (__m512bh)_mm512_loadu_si512(vb + (q * hd + c * 16) * 2);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m512bh pr = bcast_pair(p + (r0 + r) * kBlock + q * 2);
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pr, v[c]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < NC; ++c) _mm512_store_ps(o + (r0 + r) * hd + c0 + c * 16, acc[r][c]);
}

}  // namespace

// Returns false when the shape isn't covered (head_dim % 32 != 0 or > 256, fewer than 16 query rows).
bool attention_avx512bf16(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                          ThreadPool* pool) {
  const int hd = s.head_dim;
  if (hd % 32 != 0 || hd > 256 || s.q_len < 16 || s.kv_len <= 0) return false;
  const int group = s.heads / s.kv_heads;
  const int64_t Tk = s.kv_len, Tq = s.q_len;
  const int64_t Tkp = (Tk + 31) / 32 * 32;
  const int64_t kv_elems = int64_t(hd) * Tkp;  // bf16 elements per kv head in Kp and in Vp
  std::unique_ptr<uint16_t[]> kp(new uint16_t[static_cast<size_t>(s.kv_heads * kv_elems) + 32]);
  std::unique_ptr<uint16_t[]> vp(new uint16_t[static_cast<size_t>(s.kv_heads * kv_elems) + 32]);
  uint16_t* Kp = align64(kp.get());
  uint16_t* Vp = align64(vp.get());
  // Pack in blocks of 32 keys (attention_amx.cpp's packing): 16 K rows (16 bf16 pairs per 32-wide d chunk) are
  // transposed into 16 rows of Kp; each pair of V rows is interleaved into one row of Vp.
  const __m512i ileave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                          21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  parallel_for(pool, Tkp / 32, 2, [&](int64_t b0, int64_t b1) {
    for (int64_t pb = b0; pb < b1; ++pb)
      for (int h = 0; h < s.kv_heads; ++h) {
        uint32_t* kh = reinterpret_cast<uint32_t*>(Kp + h * kv_elems);
        uint32_t* vh = reinterpret_cast<uint32_t*>(Vp + h * kv_elems);
        for (int64_t j0 = pb * 32; j0 < pb * 32 + 32; j0 += 16)
          for (int d = 0; d < hd; d += 32) {
            __m512i r[16];
            for (int i = 0; i < 16; ++i) {
              const float* kr = k + (j0 + i) * s.kv_stride + int64_t(h) * hd + d;
              r[i] = j0 + i < Tk ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(kr + 16), _mm512_loadu_ps(kr))
                                 : _mm512_setzero_si512();
            }
            transpose16x16_u32(r);  // r[p]: pair d/2 + p of keys j0 .. j0+15
            for (int i = 0; i < 16; ++i) _mm512_storeu_si512(kh + (int64_t(d / 2) + i) * Tkp + j0, r[i]);
          }
        for (int64_t j = pb * 32; j < pb * 32 + 32; j += 2) {
          const float* v0 = v + j * s.kv_stride + int64_t(h) * hd;
          const float* v1 = v0 + s.kv_stride;
          for (int d = 0; d < hd; d += 16) {
            const __m256i a = j < Tk ? (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v0 + d)) : _mm256_setzero_si256();
            const __m256i c = j + 1 < Tk ? (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v1 + d)) : _mm256_setzero_si256();
            const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(a), c, 1);
            _mm512_storeu_si512(vh + (j / 2) * hd + d, _mm512_permutexvar_epi16(ileave, both));
          }
        }
      }
  });
  // max_j |k_j| per kv head, for the fixed reference (head_dim <= 64).
  const bool fixed_ref = hd <= 64;
  std::vector<float> kmax_norm(static_cast<size_t>(s.kv_heads), 0.f);
  if (fixed_ref)
    parallel_for(pool, s.kv_heads, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) {
        float m = 0.f;
        for (int64_t j = 0; j < Tk; ++j) {
          const float* kr = k + j * s.kv_stride + h * hd;
          __m512 acc = _mm512_setzero_ps();
          for (int d = 0; d < hd; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(kr + d), _mm512_loadu_ps(kr + d), acc);
          m = std::max(m, _mm512_reduce_add_ps(acc));
        }
        kmax_norm[size_t(h)] = std::sqrt(m);
      }
    });

  const int64_t qblocks = (Tq + 15) / 16;
  // One task: rows i0 .. i0+15 of query head h. Returns false (nothing written) when the fixed reference was too
  // loose for a row; `online` runs the running-max softmax instead.
  auto task = [&](int h, int64_t i0, bool online) -> bool {
    const int kvh = h / group, cblocks = hd / 16;
    const int64_t rows = std::min<int64_t>(16, Tq - i0);
    alignas(64) uint16_t qs[16 * 256];         // [16][hd] bf16, scaled by scale * log2(e)
    alignas(64) float o[16 * 256];             // [16][hd] f32
    alignas(64) float sc[16 * kBlock];         // [16][kBlock] scores (base 2)
    alignas(64) uint16_t pb[16 * kBlock];      // [16][kBlock] bf16 probabilities
    alignas(64) float sumv[16][16];            // per-row partial sums (lanes reduced at the end)
    float ref[16];  // per row: the fixed reference B_i, or the running max (online)
    int64_t limit[16];
    const __m512 qscale = _mm512_set1_ps(s.scale * 1.44269504088896341f);
    int64_t kmin = Tk, kmax = 0;
    for (int r = 0; r < 16; ++r) {
      uint16_t* qd = qs + r * hd;
      _mm512_store_ps(sumv[r], _mm512_setzero_ps());
      if (r < rows) {
        const int64_t i = i0 + r;
        const float* qr = q + i * s.q_stride + int64_t(h) * hd;
        __m512 nrm = _mm512_setzero_ps();
        for (int d = 0; d < hd; d += 32) {
          const __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qr + d), qscale);
          const __m512 b = _mm512_mul_ps(_mm512_loadu_ps(qr + d + 16), qscale);
          nrm = _mm512_fmadd_ps(b, b, _mm512_fmadd_ps(a, a, nrm));
          _mm512_store_si512(qd + d, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        }
        // 1% + a constant above the exact bound: Q and K are rounded to bf16 before the products.
        ref[r] = online ? -INFINITY : std::sqrt(_mm512_reduce_add_ps(nrm)) * kmax_norm[size_t(kvh)] * 1.01f + 1e-3f;
        limit[r] = s.causal ? std::min(Tk, s.q_offset + i + 1) : Tk;
        kmin = std::min(kmin, limit[r]);
      } else {
        std::memset(qd, 0, hd * sizeof(uint16_t));
        ref[r] = online ? -INFINITY : 0.f;
        limit[r] = 0;  // padding row: every key masked, never written out
      }
      kmax = std::max(kmax, limit[r]);
    }
    std::memset(o, 0, sizeof(float) * 16 * hd);
    const uint16_t* kh = Kp + int64_t(kvh) * kv_elems;
    const uint16_t* vh = Vp + int64_t(kvh) * kv_elems;
    for (int64_t j0 = 0; j0 < kmax; j0 += kBlock) {
      const int64_t jn = std::min<int64_t>(kBlock, (kmax - j0 + 31) / 32 * 32);  // keys of this block (x32)
      for (int64_t jj = 0; jj < jn; jj += 32) {
        scores8x32(qs, hd, kh, Tkp, j0 + jj, 0, sc + jj);
        scores8x32(qs, hd, kh, Tkp, j0 + jj, 8, sc + jj);
      }
      const bool need_mask = j0 + jn > kmin;
      for (int r = 0; r < 16; ++r) {
        const int64_t valid = limit[r] - j0;
        uint16_t* pr = pb + r * kBlock;
        const float* sr = sc + r * kBlock;
        if (valid <= 0) {  // no key of this block is visible to the row (causal, or padding)
          for (int64_t jj = 0; jj < jn; jj += 32) _mm512_store_si512(pr + jj, _mm512_setzero_si512());
          continue;
        }
        if (online) {  // running max over the visible keys; O and the sums rescaled by 2^(old - new)
          __m512 mx = _mm512_set1_ps(-INFINITY);
          for (int64_t jj = 0; jj < jn; jj += 16)
            mx = _mm512_mask_max_ps(mx, need_mask ? first_lanes(valid - jj) : __mmask16(0xFFFF), mx, _mm512_load_ps(sr + jj));
          const float nmax = std::max(ref[r], _mm512_reduce_max_ps(mx));
          if (nmax > ref[r]) {
            const float corr = ref[r] == -INFINITY ? 0.f : std::exp2(ref[r] - nmax);
            const __m512 cv = _mm512_set1_ps(corr);
            for (int c = 0; c < cblocks; ++c) _mm512_store_ps(o + r * hd + c * 16, _mm512_mul_ps(_mm512_load_ps(o + r * hd + c * 16), cv));
            _mm512_store_ps(sumv[r], _mm512_mul_ps(_mm512_load_ps(sumv[r]), cv));
            ref[r] = nmax;
          }
        }
        const __m512 b = _mm512_set1_ps(ref[r]);
        __m512 sum = _mm512_load_ps(sumv[r]);
        for (int64_t jj = 0; jj < jn; jj += 32) {
          const __mmask16 keep0 = need_mask ? first_lanes(valid - jj) : __mmask16(0xFFFF);
          const __mmask16 keep1 = need_mask ? first_lanes(valid - jj - 16) : __mmask16(0xFFFF);
          const __m512 e0 = exp2_nonpos(_mm512_sub_ps(_mm512_load_ps(sr + jj), b), keep0);
          const __m512 e1 = exp2_nonpos(_mm512_sub_ps(_mm512_load_ps(sr + jj + 16), b), keep1);
          sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
          _mm512_store_si512(pr + jj, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
        }
        _mm512_store_ps(sumv[r], sum);
      }
      for (int r0 = 0; r0 < 16; r0 += 4)
        for (int c0 = 0; c0 < cblocks; c0 += 4) {
          switch (std::min(4, cblocks - c0)) {
            case 4: pv4<4>(pb, jn, vh, hd, j0, r0, c0 * 16, o); break;
            case 3: pv4<3>(pb, jn, vh, hd, j0, r0, c0 * 16, o); break;
            case 2: pv4<2>(pb, jn, vh, hd, j0, r0, c0 * 16, o); break;
            default: pv4<1>(pb, jn, vh, hd, j0, r0, c0 * 16, o); break;
          }
        }
    }
    float sum[16];
    for (int64_t r = 0; r < rows; ++r) {
      sum[r] = _mm512_reduce_add_ps(_mm512_load_ps(sumv[r]));
      if (!online && !(sum[r] >= 1e-20f)) return false;  // bound too loose for this row: the online softmax redoes it
    }
    // out rows = o / sum: f32 into out, or bf16 into s.out_tiles (attention_amx.cpp's write_out_rows).
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
      const float* src = o + r * hd;
      if (s.out_tiles) {
        const int64_t m = s.out_tiles_row0 + i0 + r, K = int64_t(s.heads) * hd;
        uint16_t* dst = s.out_tiles + a_tile_offset(m, int64_t(h) * hd / 32, K) + (m % 16) * 32;
        for (int c = 0; c < hd; c += 32)
          _mm512_store_si512(dst + c / 32 * 512, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(_mm512_load_ps(src + c + 16), inv),
                                                                            _mm512_mul_ps(_mm512_load_ps(src + c), inv)));
        continue;
      }
      float* dst = out + (i0 + r) * s.out_row_stride() + int64_t(h) * hd;
      for (int c = 0; c < hd; c += 16) _mm512_storeu_ps(dst + c, _mm512_mul_ps(_mm512_load_ps(src + c), inv));
    }
    return true;
  };
  // Tasks head-major: consecutive tasks (on whichever thread) read the same kv head's K and V, which stay in L2.
  run_tasks(pool, qblocks * s.heads, [&](int64_t t) {
    const int h = static_cast<int>(t / qblocks);
    const int64_t i0 = (t % qblocks) * 16;
    if (!task(h, i0, !fixed_ref)) task(h, i0, true);
  });
  return true;
}

}  // namespace plm::cpu::kernels
