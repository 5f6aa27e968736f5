// AVX-512 GEMV (M <= 8 rows of x) on weight-only quantized matrices, f32 accumulation. With f32 activations:
// int8: 16 weights per step widened (vpmovsxbd) and converted to f32, one scale per row applied at the end.
// q4: 32 weights per group from 16 bytes; the nibbles index a 16-entry f32 table (q - 8) with vpermps, the
// group's partial dot is scaled by its f32 scale into per-lane accumulators. Four W rows are processed
// together so each x vector load serves four FMAs, with two k steps in flight per row. With VNNI (the default
// where present): x rounded to int8 per block of 32 and vpdpbusd, for int8 and q4 (gemv_vnni).
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
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
        _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k) + R * K, _MM_HINT_T0);  // the next R rows
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

// q4 x int8 with VNNI (llama.cpp's Q4_0 x Q8_0 idea): x is quantized per row in blocks of 32 (the q4
// groups) to signed int8, laid out per 128-element chunk as the 64 bytes the low nibbles of 4 groups pair
// with, then the 64 the high nibbles pair with. vpdpbusd multiplies the unsigned nibbles q (0..15) by x;
// 8 * sum(x) per lane, precomputed, turns sum(q * x) into sum((q - 8) * x); each lane's int32 (4 low and 4
// high products of one group) is scaled by that group's weight scale times its x scale. About 12 vector
// ops per 128 weights per row against ~32 for the f32 table lookup, which was compute-bound (~12 GB/s).
struct X4 {
  const int8_t* q;         // [M][K/128][128]: per chunk, low-nibble partners of 4 groups, then high-nibble
  const int32_t* sum8;     // [M][K/128][16]: 8 * the sum of each lane's 8 x values
  const float* lane_scale; // [M][K/128][16]: x scale of each lane's group
};

void quantize_x_q4(const float* x, int64_t M, int64_t K, int8_t* q, int32_t* sum8, float* lane_scale) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K / 128; ++c) {
      int8_t* qc = q + (m * (K / 128) + c) * 128;
      int32_t* sc = sum8 + (m * (K / 128) + c) * 16;
      float* lc = lane_scale + (m * (K / 128) + c) * 16;
      for (int g = 0; g < 4; ++g) {
        const float* xb = x + m * K + c * 128 + g * 32;
        const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float inv = amax > 0 ? 127.f / amax : 0.f;
        const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
        const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qc + g * 16), _mm512_cvtsepi32_epi8(i0));       // elements 0..15
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qc + 64 + g * 16), _mm512_cvtsepi32_epi8(i1));  // 16..31
        alignas(64) int32_t a[16], b[16];
        _mm512_store_si512(a, i0);
        _mm512_store_si512(b, i1);
        for (int l = 0; l < 4; ++l) {
          sc[g * 4 + l] = 8 * (a[4 * l] + a[4 * l + 1] + a[4 * l + 2] + a[4 * l + 3] + b[4 * l] + b[4 * l + 1] +
                               b[4 * l + 2] + b[4 * l + 3]);
          lc[g * 4 + l] = amax / 127.f;
        }
      }
    }
}

template <int R>
void q4_rows_vnni(const uint8_t* w, const float* scales, int64_t K, const X4& xq, int64_t M, int64_t N, int64_t n,
                  const float* bias, float* y) {
  const int64_t chunks = K / 128, groups = K / kQ4Group;
  const __m512i nib = _mm512_set1_epi8(15);
  const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  for (int64_t m = 0; m < M; ++m) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const int8_t* xc = xq.q + (m * chunks + c) * 128;
      const __m512i xlo = _mm512_loadu_si512(xc), xhi = _mm512_loadu_si512(xc + 64);
      const __m512i s8 = _mm512_loadu_si512(xq.sum8 + (m * chunks + c) * 16);
      const __m512 xs = _mm512_loadu_ps(xq.lane_scale + (m * chunks + c) * 16);
      for (int r = 0; r < R; ++r) {
        const uint8_t* wr = w + r * (K / 2) + c * 64;
        _mm_prefetch(reinterpret_cast<const char*>(wr) + R * (K / 2), _MM_HINT_T0);  // the next R rows
        const __m512i b = _mm512_loadu_si512(wr);
        const __m512i lo = _mm512_and_si512(b, nib), hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), nib);
        __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo);
        d = _mm512_sub_epi32(_mm512_dpbusd_epi32(d, hi, xhi), s8);
        const __m512 ws = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(scales + r * groups + c * 4)));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(ws, xs), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[r]) + (bias ? bias[n + r] : 0.f);
  }
}

// The rows of W in tasks of up to 512 (at least 4 tasks per thread, so k and v still split), each task in
// passes of 8 (eight weight streams in flight: 1.05-1.06x the bandwidth of four for int8), then 4, then 1
// rows: pass(std::integral_constant<int, R>, n) handles rows n .. n+R-1. Long
// runs of contiguous rows per task let the prefetchers stream (with the next R rows prefetched in the
// kernels): q4 69% of the read bandwidth against 45% with 64-row tasks and a 1 KiB prefetch distance, int8
// 98-100% against 88-91% (in process, 0.6 GB of q4 / 1.2 GB of int8 matrices).
// The tasks of one matrix of N rows: `rows` each, tasks [first, first + count) of a region.
struct RowTasks {
  int64_t N, rows, first, count;
};
RowTasks row_tasks(int64_t N, int threads, int64_t first) {
  const int64_t rows = std::clamp<int64_t>(N / (4 * threads) / 8 * 8, 64, 512);
  return {N, rows, first, (N + rows - 1) / rows};
}

// Task t of plan p: rows in passes of 8, then 4, then 1.
template <class Pass>
void run_row_task(const RowTasks& p, int64_t t, const Pass& pass) {
  const int64_t n1 = std::min(p.N, (t + 1) * p.rows);
  int64_t n = t * p.rows;
  for (; n + 8 <= n1; n += 8) pass(std::integral_constant<int, 8>{}, n);
  for (; n + 4 <= n1; n += 4) pass(std::integral_constant<int, 4>{}, n);
  for (; n < n1; ++n) pass(std::integral_constant<int, 1>{}, n);
}

// x rounded for the int8 kernel, in the calling thread's buffers (shared with the workers for one call).
XQ quantize_x_q8_buffers(const float* x, int64_t M, int64_t K) {
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<uint64_t> nbuf;
  thread_local std::vector<float> sbuf;
  qbuf.resize(static_cast<size_t>(M * K));
  nbuf.resize(static_cast<size_t>(M * K / 64));
  sbuf.resize(static_cast<size_t>(M * K / 4));
  quantize_x(x, M, K, qbuf.data(), nbuf.data(), sbuf.data());
  return XQ{qbuf.data(), nbuf.data(), sbuf.data()};
}

// x rounded for the q4 kernel, likewise.
X4 quantize_x_q4_buffers(const float* x, int64_t M, int64_t K) {
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<int32_t> sbuf;
  thread_local std::vector<float> lbuf;
  qbuf.resize(static_cast<size_t>(M * K));
  sbuf.resize(static_cast<size_t>(M * K / 8));
  lbuf.resize(static_cast<size_t>(M * K / 8));
  quantize_x_q4(x, M, K, qbuf.data(), sbuf.data(), lbuf.data());
  return X4{qbuf.data(), sbuf.data(), lbuf.data()};
}

}  // namespace

// The VNNI decode of 1-8 outputs over one x (every one int8, or every one q4, one K, plain stores): x quantized
// once, every matrix's row tasks in one parallel region. For q/k/v and gate/up that is one region a layer
// instead of three and two, each of which ended with one thread waiting on the other's last task.
bool gemv_vnni(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
  if (count < 1 || count > 8) return false;
  const Quant q = outs[0].w->quant;
  const int64_t K = outs[0].w->cols;
  if ((q != Quant::kQ8 || K % 64 != 0) && (q != Quant::kQ4 || K % 128 != 0)) return false;
  for (int i = 0; i < count; ++i)
    if (outs[i].w->quant != q || outs[i].w->cols != K || outs[i].epilogue != Epilogue::kStore || outs[i].tiles) return false;
  const int threads = pool ? pool->size() : 1;
  RowTasks plan[8];
  int64_t tasks = 0;
  for (int i = 0; i < count; ++i) {
    plan[i] = row_tasks(outs[i].w->rows, threads, tasks);
    tasks += plan[i].count;
  }
  auto output_of = [&](int64_t t) {
    int i = 0;
    while (i + 1 < count && t >= plan[i + 1].first) ++i;
    return i;
  };
  if (q == Quant::kQ8) {
    const XQ xq = quantize_x_q8_buffers(x, M, K);
    run_tasks(pool, tasks, [&](int64_t t) {
      const int i = output_of(t);
      const WeightMatrix& w = *outs[i].w;
      const int8_t* W = static_cast<const int8_t*>(w.data);
      run_row_task(plan[i], t - plan[i].first, [&](auto r, int64_t n) {
        q8_rows_vnni<decltype(r)::value>(W + n * K, w.scales + n, K, xq, M, w.rows, n, outs[i].bias, outs[i].y);
      });
    });
  } else {
    const X4 xq = quantize_x_q4_buffers(x, M, K);
    const int64_t groups = K / kQ4Group;
    run_tasks(pool, tasks, [&](int64_t t) {
      const int i = output_of(t);
      const WeightMatrix& w = *outs[i].w;
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      run_row_task(plan[i], t - plan[i].first, [&](auto r, int64_t n) {
        q4_rows_vnni<decltype(r)::value>(W + n * (K / 2), w.scales + n * groups, K, xq, M, w.rows, n, outs[i].bias,
                                         outs[i].y);
      });
    });
  }
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
