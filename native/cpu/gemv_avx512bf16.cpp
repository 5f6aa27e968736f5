// The decode GEMV at precision bf16 on AVX512-BF16 CPUs (with or without AMX): M <= 8 rows of x rounded to bf16
// (nearest even), bf16 weights read in place, f32 accumulation with vdpbf16ps (32 multiply-adds per instruction,
// twice an f32 FMA's). Batched decode is bound by arithmetic, not memory, on small CPUs: 8 rows of PLM-1B on 2
// Zen 5 cores ran at ~60 GFLOP/s in f32 (the cores' FMA peak is ~110), and this kernel halves the instructions.
//
// Row invariance: output (m, n) is acc = dpbf16(acc, x[m, 32b..32b+31], w[n, 32b..32b+31]) for b ascending from
// one zeroed accumulator, then y = reduce_add(acc) + bias, whatever M is and wherever row m sits; so a decode
// row's logits do not depend on the other sequences of the batch.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

constexpr int64_t kBlock = 32;  // bf16 of one row in one k block (64 bytes)

// x [M, K] f32 -> xb [K/32][M][32] bf16: one k block of all rows contiguous (M * 64 bytes), so the 8 rows of a
// step never share one L1 set (row-major rows of K = 2048 bf16 sit 4 KiB apart).
void to_bf16_blocks(const float* x, int64_t M, int64_t K, uint16_t* xb) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; k += kBlock) {
      const __m512 lo = _mm512_loadu_ps(x + m * K + k), hi = _mm512_loadu_ps(x + m * K + k + 16);
      _mm512_storeu_si512(xb + ((k / kBlock) * M + m) * kBlock, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

// MR rows of x x NR weight rows [n, n + NR) (clamped to n1: repeated rows are computed and not stored).
template <int MR, int NR>
inline void dot_block(const uint16_t* xb, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y,
                      int64_t n, int64_t n1) {
  const size_t rb = static_cast<size_t>(K) * 2;
  const int R = static_cast<int>(std::min<int64_t>(NR, n1 - n));
  const uint8_t* wr[NR];
  for (int r = 0; r < NR; ++r) wr[r] = W + static_cast<size_t>(n + std::min(r, R - 1)) * rb;
  // From 4 rows of x on, a block's arithmetic outlasts its weight read, and the read of the next block stalls
  // the next block unless it is already under way: the next block's NR rows go to L2 a few lines per k step,
  // spread over this block (8 rows: a PLM-1B step 146-153 ms instead of 170-176 on 2 Xeon cores; no gain below).
  const uint8_t* next = W + static_cast<size_t>(std::min<int64_t>(n + NR, n1)) * rb;  // at most one past the task
  const size_t next_bytes = static_cast<size_t>(std::clamp<int64_t>(n1 - n - NR, 0, NR)) * rb;
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
  const uint16_t* xk = xb;
  for (int64_t k = 0; k < K; k += kBlock, xk += MR * kBlock) {
    __m512bh w[NR];
    if constexpr (MR >= 4) {
      const size_t at = static_cast<size_t>(k / kBlock) * NR * 64;
      for (int r = 0; r < NR; ++r)
        if (at + r * 64 < next_bytes) _mm_prefetch(reinterpret_cast<const char*>(next) + at + r * 64, _MM_HINT_T1);
    }
    for (int r = 0; r < NR; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(wr[r]) + (k + 512) * 2, _MM_HINT_T0);
      w[r] = (__m512bh)_mm512_loadu_si512(wr[r] + k * 2);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xk + m * kBlock);
      for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, w[r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[n + r] : 0.f);
}

template <int MR>
void rows_range(const uint16_t* xb, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t n0,
                int64_t n1) {
  // MR * NR accumulators (8 to 18) + NR weights + 1 x of the 32 registers. 3 weight rows per x load measured
  // ~10% faster than 2 for 5 and 6 rows and slower for 8 (24 accumulators: the compiler spills).
  constexpr int NR = MR == 1 ? 8 : MR == 2 ? 4 : MR <= 6 ? 3 : 2;
  for (int64_t n = n0; n < n1; n += NR) dot_block<MR, NR>(xb, K, N, W, bias, y, n, n1);
}

}  // namespace

bool gemv_avx512bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (M < 1 || M > kGemvRows || w.dtype != DType::kBF16 || w.quant != Quant::kNone || K % kBlock != 0) return false;
  if (N <= 0) return true;
  thread_local std::vector<uint16_t> xb_buf;
  xb_buf.resize(static_cast<size_t>(M * K));
  const uint16_t* xb = xb_buf.data();  // [K/32][M][32] bf16: the caller's buffer, read by the workers
  to_bf16_blocks(x, M, K, xb_buf.data());
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const int threads = pool ? pool->size() : 1;
  const auto [rows, tasks] = gemv_row_split(N, K * 2, threads, 8);
  run_tasks(pool, tasks, [&](int64_t t) {
    const int64_t n0 = t * rows, n1 = std::min(N, n0 + rows);
    switch (M) {
      case 1: rows_range<1>(xb, K, N, W, bias, y, n0, n1); break;
      case 2: rows_range<2>(xb, K, N, W, bias, y, n0, n1); break;
      case 3: rows_range<3>(xb, K, N, W, bias, y, n0, n1); break;
      case 4: rows_range<4>(xb, K, N, W, bias, y, n0, n1); break;
      case 5: rows_range<5>(xb, K, N, W, bias, y, n0, n1); break;
      case 6: rows_range<6>(xb, K, N, W, bias, y, n0, n1); break;
      case 7: rows_range<7>(xb, K, N, W, bias, y, n0, n1); break;
      default: rows_range<8>(xb, K, N, W, bias, y, n0, n1); break;
    }
  });
  return true;
}

}  // namespace plm::cpu::kernels
