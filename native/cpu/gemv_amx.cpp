// The decode GEMV at precision bf16 on AMX CPUs: y[M, N] = bf16(x)[M, K] · W[N, K]^T + bias for M <= 16 rows.
//
// The roles of the prefill kernel (gemm_amx.cpp) are swapped: A = 16 weight rows x 32 k, loaded straight from the
// mmap'd row-major W with the row stride (no packing, no copy); B = x's rows as VNNI pairs [16 k-pairs][16 m][2],
// built once per call; C = [16 n][16 m] f32. One TDPBF16PS covers 16 weight rows x 32 k for all 16 rows of x, so
// a step of 8 sequences costs the matrix unit about what one costs, and the step stays bound by the weight read
// (the vdpbf16ps GEMV spent ~1.7x a row's time on 8 rows, on the vector units).
//
// Row invariance: output (m, n) is one accumulator, zeroed, then dpbf16(w[n, 32c..32c+31], x[m, same]) for chunk c
// ascending, then + bias: nothing depends on M or on where row m sits in the batch. It is also the arithmetic of
// the prefill kernel's (m, n) with A and B exchanged (the pair products commute), which plm_matmul_test checks.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/align.h"
#include "core/thread_pool.h"
#include "cpu/amx_tiles.h"
#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

constexpr int64_t kChunk = 32;      // k per tile: 16 bf16 pairs, 64 bytes of a weight row
constexpr int64_t kBlockRows = 16;  // weight rows per A tile

// x [M, K] f32 -> xb [K/32][16 pairs][16 m] u32 (two bf16, nearest even), rows M..15 zero: chunk c is one B tile.
void to_pair_tiles(const float* x, int64_t M, int64_t K, uint32_t* xb) {
  for (int64_t c = 0; c < K / kChunk; ++c) {
    __m512i r[16];
    for (int64_t m = 0; m < 16; ++m) {
      if (m >= M) {
        r[m] = _mm512_setzero_si512();
        continue;
      }
      const float* xr = x + m * K + c * kChunk;
      r[m] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + 16), _mm512_loadu_ps(xr));
    }
    transpose16x16_u32(r);  // r[p] = pair p of every row m
    for (int p = 0; p < 16; ++p) _mm512_store_si512(xb + (c * 16 + p) * 16, r[p]);
  }
}

// 16 weight rows from row n: C = tile 0, B = tile 1 (x's pairs), A = tile 2 (16 rows x 32 k of W, stride K).
// The hardware prefetchers keep up with 16 row streams: one row ran as fast as the vdpbf16ps GEMV (PLM-1B's decode
// matmuls 83-86 ms a step against 85-87 on 2 Xeon cores). Two or four blocks at once (32, 64 streams), software
// prefetches 256-2048 bytes ahead, or the next block's rows prefetched were 3-40% slower.
void row_block(const uint32_t* xb, int64_t M, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y,
               int64_t n) {
  const size_t stride = static_cast<size_t>(K) * 2;
  const uint8_t* w = W + static_cast<size_t>(n) * stride;
  _tile_zero(0);
  for (int64_t c = 0; c < K / kChunk; ++c) {
    _tile_loadd(1, xb + c * 256, 64);
    _tile_loadd(2, w + c * 64, stride);
    _tile_dpbf16ps(0, 2, 1);
  }
  alignas(64) float out[256];  // [16 n][16 m]
  _tile_stored(0, out, 64);
  for (int64_t m = 0; m < M; ++m)
    for (int i = 0; i < 16; ++i) y[m * N + n + i] = out[i * 16 + m] + (bias ? bias[n + i] : 0.f);
}

}  // namespace

bool gemv_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (M < 1 || M > 16 || w.dtype != DType::kBF16 || w.quant != Quant::kNone || K % kChunk != 0 ||
      N % kBlockRows != 0)
    return false;
  if (N <= 0 || K <= 0) return true;
  thread_local std::vector<uint32_t> xb_buf;
  xb_buf.resize(static_cast<size_t>(K / 2 * 16 + 16));
  uint32_t* xb = align64(xb_buf.data());  // [K/32][16][16] u32: the caller's buffer, read by the workers
  to_pair_tiles(x, M, K, xb);
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const int threads = pool ? pool->size() : 1;
  const auto [rows, tasks] = gemv_row_split(N, K * 2, threads, kBlockRows);
  run_tasks(pool, tasks, [&](int64_t t) {
    configure_tiles();
    for (int64_t n = t * rows; n < std::min(N, (t + 1) * rows); n += kBlockRows) row_block(xb, M, K, N, W, bias, y, n);
    _tile_release();
  });
  return true;
}

}  // namespace plm::cpu::kernels
