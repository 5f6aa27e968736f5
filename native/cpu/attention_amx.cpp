// AMX-BF16 flash attention for many query rows (ViT tiles, prefill chunks) in precision "bf16".
//
// Per task: 16 query rows of one or more query heads, streaming over the keys (the fixed-reference kernel
// below for head_dim <= 64, the online softmax otherwise). Q (pre-scaled), K and
// V are rounded to bf16; S = Q·K^T and O += P·V run on AMX tiles with f32 accumulation; the online softmax
// (running max, sum, rescale of O) runs in f32 on AVX-512. No [Tq, Tk] matrix exists at any time: per
// task the state is a 16 x 64 score block, a 16 x hd f32 output block and the running max/sum.
//
// Layouts (bf16, packed once per call and per kv head):
//   Kp[kvh][hd/2][Tkp][2]: the B operand of S = Q·K^T. Tile (key block kb, d chunk c) is 16 rows
//     (d pairs c*16 ..) x 16 keys, each a (K[j][2p], K[j][2p+1]) pair; row stride Tkp*4 bytes.
//   Vp[kvh][Tkp/2][hd][2]: the B operand of O = P·V. Tile (key chunk kc of 32, col block cb) is 16 rows
//     (key pairs) x 16 columns, each a (V[2p][c], V[2p+1][c]) pair; row stride hd*4 bytes.
// Keys past Tk are zero in both (and masked to -inf in S), so padding never produces NaN.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "core/align.h"
#include "core/half.h"
#include "cpu/amx_tiles.h"
#include "cpu/attention.h"

namespace plm::cpu::kernels {
namespace {


// exp(x) for x <= 0 to ~2e-7 relative (degree-5 polynomial on |r| <= ln2/2); exp(-inf) = 0. Its result
// is rounded to bf16 (P) or summed in f32, so this is far below the bf16 rounding of P.
inline __m512 exp_neg(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.3981999507e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(~under, _mm512_scalef_ps(p, n));
}

// 2^t for t <= 0 to 7.5e-5 relative (degree-3 fit of 2^r on r = t - floor(t) in [0, 1); scalef applies
// 2^floor(t) itself, so no rounding step), lanes outside `keep` exactly 0; far below P's bf16 rounding
// (2^-9), which is all the fixed-reference kernel needs. Very negative t underflows to 0 in scalef.
// 5 vector ops (the degree-4 version with round-to-nearest took 9): 1.04-1.15x for a PE-L tile's attention.
inline __m512 exp2_nonpos(__m512 t, __mmask16 keep) {
  const __m512 r = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // t - floor(t)
  __m512 p = _mm512_set1_ps(0.07802440094f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.2260673287f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.6958334809f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.9999252214f));
  return _mm512_maskz_scalef_ps(keep, p, t);  // p * 2^floor(t)
}

constexpr int kKeyBlock = 64;

// Lanes 0 .. n-1 of 16 (n clamped to [0, 16]): the keys of a 16-key score vector a row may see.
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Query rows i0 .. i0+15 of head h, scaled by s.scale * extra_scale and rounded to bf16 into qs [16][hd];
// rows past q_len are zero padding. limit[r]: how many keys row r sees (0 for padding). norm (optional):
// |scaled q row| in f32. Returns {kmin over the real rows, kmax}.
std::pair<int64_t, int64_t> load_q_block(const float* q, const AttentionShape& s, int h, int64_t i0, uint16_t* qs,
                                         int64_t* limit, float* norm, float extra_scale = 1.0f) {
  const int hd = s.head_dim;
  const int64_t rows = std::min<int64_t>(16, s.q_len - i0);
  const __m512 scale = _mm512_set1_ps(s.scale * extra_scale);
  int64_t kmin = s.kv_len, kmax = 0;
  for (int r = 0; r < 16; ++r) {
    uint16_t* qd = qs + r * hd;
    if (r < rows) {
      const int64_t i = i0 + r;
      const float* qr = q + i * s.q_stride + int64_t(h) * hd;
      __m512 nrm = _mm512_setzero_ps();
      for (int d = 0; d < hd; d += 32) {
        const __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qr + d), scale);
        const __m512 b = _mm512_mul_ps(_mm512_loadu_ps(qr + d + 16), scale);
        if (norm) nrm = _mm512_fmadd_ps(b, b, _mm512_fmadd_ps(a, a, nrm));
        _mm512_store_si512(qd + d, (__m512i)_mm512_cvtne2ps_pbh(b, a));
      }
      if (norm) norm[r] = std::sqrt(_mm512_reduce_add_ps(nrm));
      limit[r] = s.causal ? std::min(s.kv_len, s.q_offset + i + 1) : s.kv_len;
      kmin = std::min(kmin, limit[r]);
    } else {
      std::memset(qd, 0, hd * sizeof(uint16_t));
      if (norm) norm[r] = 0.f;
      limit[r] = 0;  // padding row: every key masked, never written out
    }
    kmax = std::max(kmax, limit[r]);
  }
  return {kmin, kmax};
}

// out rows i0 .. i0+rows-1 of head h = o [16][hd] / sum: f32 into out, or bf16 into s.out_tiles.
void write_out_rows(float* out, const AttentionShape& s, int h, int64_t i0, int64_t rows, const float* o,
                    const float* sum) {
  const int hd = s.head_dim;
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
}

}  // namespace

// Returns false when the shape isn't covered (head_dim % 32 != 0 or > 256, fewer than 16 query rows).
bool attention_amx_bf16(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                        ThreadPool* pool) {
  const int hd = s.head_dim;
  if (hd % 32 != 0 || hd > 256 || s.q_len < 16 || s.kv_len <= 0) return false;
  const int group = s.heads / s.kv_heads, dchunks = hd / 32, cblocks = hd / 16;
  const int64_t Tk = s.kv_len, Tq = s.q_len;
  const int64_t Tkp = (Tk + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
  const int64_t kv_elems = int64_t(hd) * Tkp;  // bf16 elements per kv head in Kp and in Vp
  // Not zero-filled: the packing below writes every element up to Tkp (zeros past Tk).
  std::unique_ptr<uint16_t[]> kp(new uint16_t[static_cast<size_t>(s.kv_heads * kv_elems) + 32]);
  std::unique_ptr<uint16_t[]> vp(new uint16_t[static_cast<size_t>(s.kv_heads * kv_elems) + 32]);
  uint16_t* Kp = align64(kp.get());
  uint16_t* Vp = align64(vp.get());
  // Pack in blocks of 16 key pairs (32 keys): 16 K rows (16 bf16 pairs each per 32-wide d chunk) are
  // transposed into 16 rows of Kp; each pair of V rows is interleaved into one row of Vp.
  const int64_t pblocks = Tkp / 32;
  const __m512i ileave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                          21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  auto pack = [&](int64_t b0, int64_t b1) {
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
  };
  parallel_for(pool, pblocks, 2, pack);

  const int64_t qblocks = (Tq + 15) / 16;
  auto task_online = [&](int64_t t) {
    const int h = static_cast<int>(t % s.heads), kvh = h / group;
    const int64_t i0 = (t / s.heads) * 16, rows = std::min<int64_t>(16, Tq - i0);
    alignas(64) uint16_t qs[16 * 256];     // [16][hd] bf16, scaled
    alignas(64) float o[16 * 256];         // [16][hd] f32 running output
    alignas(64) float sc[4][16][16];       // score tiles: [key sub-block][row][key]
    alignas(64) uint16_t p[16][kKeyBlock];  // bf16 probabilities, the A operand of P·V
    alignas(64) float pv[4][16][16];       // P·V tiles of one column pass
    alignas(64) float corr[16];
    float mx[16], sum[16];
    int64_t limit[16];
    const auto [kmin, kmax] = load_q_block(q, s, h, i0, qs, limit, nullptr);
    std::memset(o, 0, 16 * hd * sizeof(float));
    for (int r = 0; r < 16; ++r) {
      mx[r] = -INFINITY;
      sum[r] = 0.f;
    }
    const uint16_t* kh = Kp + int64_t(kvh) * kv_elems;
    const uint16_t* vh = Vp + int64_t(kvh) * kv_elems;
    const int64_t kstride = Tkp * 4, vstride = int64_t(hd) * 4, qstride = int64_t(hd) * 2;
    configure_tiles();
    for (int64_t j0 = 0; j0 < kmax; j0 += kKeyBlock) {
      // S = Q·K^T for 16 rows x 64 keys: accumulators 0..3, Q chunk in 4, K tiles in 5/6.
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int c = 0; c < dchunks; ++c) {
        _tile_loadd(4, qs + c * 32, qstride);
        const uint16_t* kb = kh + (int64_t(c) * 16 * Tkp + j0) * 2;
        _tile_loadd(5, kb, kstride);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, kb + 32, kstride);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, kb + 64, kstride);
        _tile_dpbf16ps(2, 4, 5);
        _tile_loadd(6, kb + 96, kstride);
        _tile_dpbf16ps(3, 4, 6);
      }
      _tile_stored(0, sc[0], 64);
      _tile_stored(1, sc[1], 64);
      _tile_stored(2, sc[2], 64);
      _tile_stored(3, sc[3], 64);
      // Online softmax per row; the corrections exp(old max - new max) are done 16 rows at once.
      const bool need_mask = j0 + kKeyBlock > kmin;
      alignas(64) float mold[16], bsum[16];
      for (int r = 0; r < 16; ++r) {
        const int64_t valid = limit[r] - j0;
        mold[r] = mx[r];
        bsum[r] = 0.f;
        if (valid <= 0) {  // this row sees none of these keys (causal, or a padding row)
          std::memset(p[r], 0, sizeof(p[r]));
          // corr = exp(0) = 1. Only padding rows can reach here with no max yet (a real row always has
          // key 0 in block 0); give them a finite one so the correction is not exp(NaN).
          if (mx[r] == -INFINITY) mx[r] = 0.f;
          mold[r] = mx[r];
          continue;
        }
        __m512 x[4];
        for (int b = 0; b < 4; ++b) {
          x[b] = _mm512_load_ps(sc[b][r]);
          if (need_mask) x[b] = _mm512_mask_blend_ps(first_lanes(valid - b * 16), _mm512_set1_ps(-INFINITY), x[b]);
        }
        const float bmax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3])));
        const float nmax = std::max(mx[r], bmax);
        mx[r] = nmax;
        const __m512 m = _mm512_set1_ps(nmax);
        __m512 e[4];
        for (int b = 0; b < 4; ++b) e[b] = exp_neg(_mm512_sub_ps(x[b], m));
        bsum[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(e[0], e[1]), _mm512_add_ps(e[2], e[3])));
        _mm512_store_si512(p[r], (__m512i)_mm512_cvtne2ps_pbh(e[1], e[0]));
        _mm512_store_si512(p[r] + 32, (__m512i)_mm512_cvtne2ps_pbh(e[3], e[2]));
      }
      {
        const __m512 cv = exp_neg(_mm512_sub_ps(_mm512_load_ps(mold), _mm512_loadu_ps(mx)));
        _mm512_store_ps(corr, cv);
        _mm512_storeu_ps(sum, _mm512_fmadd_ps(_mm512_loadu_ps(sum), cv, _mm512_load_ps(bsum)));
      }
      // O = O * corr + P·V, up to 4 column blocks per pass: accumulators 0..3, P in 4/5, V in 6.
      for (int cb0 = 0; cb0 < cblocks; cb0 += 4) {
        const int nb = std::min(4, cblocks - cb0);
        _tile_loadd(4, p[0], kKeyBlock * 2);
        _tile_loadd(5, p[0] + 32, kKeyBlock * 2);
        const uint16_t* v0 = vh + ((j0 / 2) * hd + int64_t(cb0) * 16) * 2;
        const uint16_t* v1 = v0 + int64_t(16) * hd * 2;  // keys j0+32 ..
        _tile_zero(0);
        _tile_loadd(6, v0, vstride);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(6, v1, vstride);
        _tile_dpbf16ps(0, 5, 6);
        _tile_stored(0, pv[0], 64);
        if (nb > 1) {
          _tile_zero(1);
          _tile_loadd(6, v0 + 32, vstride);
          _tile_dpbf16ps(1, 4, 6);
          _tile_loadd(6, v1 + 32, vstride);
          _tile_dpbf16ps(1, 5, 6);
          _tile_stored(1, pv[1], 64);
        }
        if (nb > 2) {
          _tile_zero(2);
          _tile_loadd(6, v0 + 64, vstride);
          _tile_dpbf16ps(2, 4, 6);
          _tile_loadd(6, v1 + 64, vstride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_stored(2, pv[2], 64);
        }
        if (nb > 3) {
          _tile_zero(3);
          _tile_loadd(6, v0 + 96, vstride);
          _tile_dpbf16ps(3, 4, 6);
          _tile_loadd(6, v1 + 96, vstride);
          _tile_dpbf16ps(3, 5, 6);
          _tile_stored(3, pv[3], 64);
        }
        for (int r = 0; r < 16; ++r) {
          const __m512 cv = _mm512_set1_ps(corr[r]);
          for (int b = 0; b < nb; ++b) {
            float* od = o + r * hd + (cb0 + b) * 16;
            _mm512_store_ps(od, _mm512_fmadd_ps(_mm512_load_ps(od), cv, _mm512_load_ps(pv[b][r])));
          }
        }
      }
    }
    _tile_release();
    write_out_rows(out, s, h, i0, rows, o, sum);
  };
  // Fixed-reference softmax for head_dim <= 64: every score of row i is at most B_i = |q_i| * max_j |k_j| *
  // scale (Cauchy-Schwarz), so P = exp(S - B_i) never overflows and needs no running max: no rescaling of O,
  // which therefore stays in accumulator tiles 0..3 over all keys, and no per-block max reductions. P keeps
  // bf16's relative precision at any magnitude; a row whose sum comes out below 1e-20 (its bound more than
  // ~46 above its real max, where tiny terms could lose precision) sends the task to the online kernel.
  // Scores are taken in base 2 (Q pre-scaled by log2(e)): P = 2^(S' - B'_i) is the same exp(S - B_i).
  std::vector<float> kmax_norm(static_cast<size_t>(s.kv_heads), 0.f);
  const bool fixed_ref = hd <= 64;
  if (fixed_ref) {
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
  }
  // One query head's 16 rows for the fixed-reference kernel: Q (bf16, base-2 scaled), per-row bounds and
  // key limits, per-row partial sums.
  struct FixedRows {
    alignas(64) uint16_t qs[16 * 64];  // [16][hd]
    alignas(64) float sumv[16][16];    // per-row partial sums, reduced once at the end
    float bound[16];
    int64_t limit[16];
    int64_t kmin, kmax, rows;
  };
  auto prepare_rows = [&](int h, int64_t i0, FixedRows& f) {
    const auto [kmin, kmax] = load_q_block(q, s, h, i0, f.qs, f.limit, f.bound, 1.44269504088896341f);
    f.kmin = kmin;
    f.kmax = kmax;
    f.rows = std::min<int64_t>(16, Tq - i0);
    for (int r = 0; r < 16; ++r) {
      _mm512_store_ps(f.sumv[r], _mm512_setzero_ps());
      // 1% + a constant above the exact bound: Q and K are rounded to bf16 before the products
      if (r < f.rows) f.bound[r] = f.bound[r] * kmax_norm[size_t(h / group)] * 1.01f + 1e-3f;
    }
  };
  // Keys j_begin .. j_end-1 (j_begin a multiple of 32) for rows f of kv head kvh: O += P·V in accumulator
  // tiles 0..cblocks-1 (the caller zeroes, loads or stores them); S in 4/5, operands in 6 (Q chunk, then P)
  // and 7 (K, then V). Needs configure_tiles() first.
  auto run_keys = [&](FixedRows& f, int kvh, int64_t j_begin, int64_t j_end) {
    alignas(64) float sc[2][2][16][16];  // score tiles, double-buffered: [block parity][key half][row][key]
    alignas(64) uint16_t p[2][16][32];   // bf16 probabilities, the A operand of P·V, double-buffered
    const uint16_t* kh = Kp + int64_t(kvh) * kv_elems;
    const uint16_t* vh = Vp + int64_t(kvh) * kv_elems;
    const int64_t kstride = Tkp * 4, vstride = int64_t(hd) * 4, qstride = int64_t(hd) * 2;
    // S = Q·K^T of keys j0 .. j0+31 into tiles 4/5.
    auto scores = [&](int64_t j0) {
      _tile_zero(4);
      _tile_zero(5);
      for (int c = 0; c < dchunks; ++c) {
        _tile_loadd(6, f.qs + c * 32, qstride);
        const uint16_t* kb = kh + (int64_t(c) * 16 * Tkp + j0) * 2;
        _tile_loadd(7, kb, kstride);
        _tile_dpbf16ps(4, 6, 7);
        _tile_loadd(7, kb + 32, kstride);
        _tile_dpbf16ps(5, 6, 7);
      }
    };
    // O += P·V for the block of keys j0 .. j0+31 whose probabilities are in pb.
    auto accumulate = [&](int64_t j0, const uint16_t* pb) {
      _tile_loadd(6, pb, 64);
      const uint16_t* v0 = vh + ((j0 / 2) * hd) * 2;
      _tile_loadd(7, v0, vstride);
      _tile_dpbf16ps(0, 6, 7);
      if (cblocks > 1) {
        _tile_loadd(7, v0 + 32, vstride);
        _tile_dpbf16ps(1, 6, 7);
      }
      if (cblocks > 2) {
        _tile_loadd(7, v0 + 64, vstride);
        _tile_dpbf16ps(2, 6, 7);
      }
      if (cblocks > 3) {
        _tile_loadd(7, v0 + 96, vstride);
        _tile_dpbf16ps(3, 6, 7);
      }
    };
    if (j_begin >= j_end) return;
    scores(j_begin);
    _tile_stored(4, sc[0][0], 64);
    _tile_stored(5, sc[0][1], 64);
    // Software pipeline over blocks of 32 keys: block j's Q·K^T is issued one step ahead of its softmax and
    // its P·V one step behind, so the matrix unit works while the vector units compute exp, and no tile load
    // waits on stores just made (S went AMX -> memory -> AVX-512 -> memory -> AMX every 32 keys in lockstep).
    for (int64_t j0 = j_begin, cur = 0; j0 < j_end; j0 += 32, cur ^= 1) {
      const bool more = j0 + 32 < j_end;
      if (more) scores(j0 + 32);
      const bool need_mask = j0 + 32 > f.kmin;
      for (int r = 0; r < 16; ++r) {
        const int64_t valid = f.limit[r] - j0;
        if (valid <= 0) {  // no key of this block is visible to the row (causal, or padding)
          _mm512_store_si512(p[cur][r], _mm512_setzero_si512());
          continue;
        }
        const __mmask16 keep0 = need_mask ? first_lanes(valid) : __mmask16(0xFFFF);
        const __mmask16 keep1 = need_mask ? first_lanes(valid - 16) : __mmask16(0xFFFF);
        const __m512 b = _mm512_set1_ps(f.bound[r]);
        const __m512 e0 = exp2_nonpos(_mm512_sub_ps(_mm512_load_ps(sc[cur][0][r]), b), keep0);
        const __m512 e1 = exp2_nonpos(_mm512_sub_ps(_mm512_load_ps(sc[cur][1][r]), b), keep1);
        _mm512_store_ps(f.sumv[r], _mm512_add_ps(_mm512_load_ps(f.sumv[r]), _mm512_add_ps(e0, e1)));
        _mm512_store_si512(p[cur][r], (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      }
      if (more) {
        _tile_stored(4, sc[cur ^ 1][0], 64);
        _tile_stored(5, sc[cur ^ 1][1], 64);
      }
      if (j0 > j_begin) accumulate(j0 - 32, p[cur ^ 1][0]);
      if (!more) accumulate(j0, p[cur][0]);
    }
  };
  auto store_o = [&](float* o) {
    _tile_stored(0, o, int64_t(hd) * 4);
    if (cblocks > 1) _tile_stored(1, o + 16, int64_t(hd) * 4);
    if (cblocks > 2) _tile_stored(2, o + 32, int64_t(hd) * 4);
    if (cblocks > 3) _tile_stored(3, o + 48, int64_t(hd) * 4);
  };
  auto load_o = [&](const float* o) {
    _tile_loadd(0, o, int64_t(hd) * 4);
    if (cblocks > 1) _tile_loadd(1, o + 16, int64_t(hd) * 4);
    if (cblocks > 2) _tile_loadd(2, o + 32, int64_t(hd) * 4);
    if (cblocks > 3) _tile_loadd(3, o + 48, int64_t(hd) * 4);
  };
  auto zero_o = [&]() {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  };
  // Writes rows f of head h from o [16][hd]; false when a row's sum shows its bound was too loose.
  auto finish_rows = [&](const FixedRows& f, int h, int64_t i0, const float* o) -> bool {
    float sum[16];
    for (int64_t r = 0; r < f.rows; ++r) {
      sum[r] = _mm512_reduce_add_ps(_mm512_load_ps(f.sumv[r]));
      if (!(sum[r] >= 1e-20f)) return false;  // bound too loose for this row: the online kernel redoes the task
    }
    write_out_rows(out, s, h, i0, f.rows, o, sum);
    return true;
  };
  // A fixed-reference task: 16 rows (from i0) of the n query heads h0 .. h0+n-1 under one tile configuration.
  // Keys go in chunks of `chunk`, each visited by all n heads in turn, their O parked in memory between
  // chunks; the sums are checked after the tiles are released, a failing head redone by the online kernel.
  constexpr int kMaxHeadsPerTask = 8;
  auto task_heads = [&](int64_t i0, int h0, int n, int64_t chunk) {
    FixedRows f[kMaxHeadsPerTask];
    alignas(64) float o[kMaxHeadsPerTask][16 * 64];  // [head][16][hd] f32 output
    for (int g = 0; g < n; ++g) prepare_rows(h0 + g, i0, f[g]);
    const int64_t kmax = f[0].kmax;  // the limits depend on the rows only, not on the head
    configure_tiles();
    for (int64_t c0 = 0; c0 < kmax; c0 += chunk)
      for (int g = 0; g < n; ++g) {
        if (c0 == 0) zero_o();
        else load_o(o[g]);
        run_keys(f[g], (h0 + g) / group, c0, std::min(kmax, c0 + chunk));
        store_o(o[g]);
      }
    _tile_release();
    for (int g = 0; g < n; ++g)
      if (!finish_rows(f[g], h0 + g, i0, o[g])) task_online((i0 / 16) * s.heads + h0 + g);
  };
  if (fixed_ref && group > 1 && group <= kMaxHeadsPerTask) {
    // Grouped KV heads (the decoder): a task is (16 rows, kv head), the group's query heads taking turns over
    // each 512-key chunk (128 KiB of K and V, L2-resident). Per head it was one task streaming all of K and
    // V (2.4 MB per kv head at 9238 keys, beyond L2) once per query head. Bit-identical output; A/B, causal
    // 32/8 heads: 1.16-1.19x at 512-2048 keys, 1.21-1.37x at 4096, 1.18-1.26x at 9238.
    run_tasks(pool, qblocks * s.kv_heads, [&](int64_t t) {
      const int kvh = static_cast<int>(t / qblocks);
      task_heads((t % qblocks) * 16, kvh * group, group, 512);
    });
    return true;
  }
  // Ungrouped heads (the ViT): a task is 16 rows of 4 consecutive heads, all keys in one chunk (1040 tasks
  // per PE-L tile and layer otherwise, each setting up and releasing the tiles: 1.05x on 2 threads, in-process
  // A/B). Without the fixed reference (head_dim > 64): one task per head, online softmax.
  // Tasks go head-major (in both branches): consecutive tasks, on whichever thread, read the same heads' K
  // and V, which stay in L2 (4 PE-L heads: ~1 MiB). Row-major, they cycled through all 16 heads' 4.2 MiB and
  // streamed it from L3 on every task: 1.23-1.33x for a PE-L tile's attention on 1 and 2 threads (in-process
  // A/B, bit-identical); grouped causal 32/8 heads 1.18x at 512 keys, 1.01-1.06x at 1302-4096.
  const int per_task = fixed_ref && s.heads % 4 == 0 ? 4 : 1;
  run_tasks(pool, qblocks * (s.heads / per_task), [&](int64_t t) {
    const int h0 = static_cast<int>(t / qblocks) * per_task;
    const int64_t i0 = (t % qblocks) * 16;
    if (fixed_ref) task_heads(i0, h0, per_task, Tkp);
    else task_online((i0 / 16) * s.heads + h0);
  });
  return true;
}

}  // namespace plm::cpu::kernels
