// The decode GEMV at precision bf16 on AMX CPUs: y[M, N] = bf16(x)[M, K] · W[N, K]^T + bias for M <= 80 rows
// (decode steps of up to 80 sequences, and short prompt chunks, e.g. a chat's next question: there the prefill
// kernel, which repacks each weight panel per call, read the weights at less than half this kernel's rate).
//
// The roles of the prefill kernel (gemm_amx.cpp) are swapped: A = 16 weight rows x 32 k, loaded straight from the
// mmap'd row-major W with the row stride (no packing, no copy); B = x's rows as VNNI pairs [16 k-pairs][16 m][2],
// built once per call, one B tile per 16 rows; C = [16 n][16 m] f32 per B tile. One TDPBF16PS covers 16 weight
// rows x 32 k for 16 rows of x, and each A tile serves up to 5 B tiles, so a step of 8 (or 80) sequences reads the
// weights once and stays bound by that read (the vdpbf16ps GEMV spent ~1.7x a row's time on 8 rows).
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

constexpr int kMaxGroups = 5;  // B tiles of 16 x rows each: C tiles 0..4, A tile 5, B tiles 6 and 7 in turn

// x [M, K] f32 -> xb [K/32][G][16 pairs][16 m] u32 (two bf16, nearest even), for G = ceil(M / 16) groups of 16
// rows, rows M..16G-1 zero: chunk c of group g is one B tile.
void to_pair_tiles(const float* x, int64_t M, int64_t K, int G, uint32_t* xb) {
  for (int64_t c = 0; c < K / kChunk; ++c)
    for (int g = 0; g < G; ++g) {
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t m = g * 16 + i;
        if (m >= M) {
          r[i] = _mm512_setzero_si512();
          continue;
        }
        const float* xr = x + m * K + c * kChunk;
        r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + 16), _mm512_loadu_ps(xr));
      }
      transpose16x16_u32(r);  // r[p] = pair p of every row of the group
      for (int p = 0; p < 16; ++p) _mm512_store_si512(xb + ((c * G + g) * 16 + p) * 16, r[p]);
    }
}

// (GCC's AMX intrinsics paste the tile number into the asm text, so tile numbers are literals throughout.)

// Group g of this chunk: its x pairs into B tile 6 or 7 (alternating, so a load overlaps the previous product),
// then C tile g += A (tile 5) . B.
template <int G>
inline void group_products(const uint32_t* xc) {
  _tile_loadd(6, xc, 64);
  _tile_dpbf16ps(0, 5, 6);
  if constexpr (G > 1) {
    _tile_loadd(7, xc + 256, 64);
    _tile_dpbf16ps(1, 5, 7);
  }
  if constexpr (G > 2) {
    _tile_loadd(6, xc + 512, 64);
    _tile_dpbf16ps(2, 5, 6);
  }
  if constexpr (G > 3) {
    _tile_loadd(7, xc + 768, 64);
    _tile_dpbf16ps(3, 5, 7);
  }
  if constexpr (G > 4) {
    _tile_loadd(6, xc + 1024, 64);
    _tile_dpbf16ps(4, 5, 6);
  }
}

template <int G>
inline void zero_groups() {
  _tile_zero(0);
  if constexpr (G > 1) _tile_zero(1);
  if constexpr (G > 2) _tile_zero(2);
  if constexpr (G > 3) _tile_zero(3);
  if constexpr (G > 4) _tile_zero(4);
}

// C tiles 0..G-1 -> y rows [16g, min(M, 16g + 16)), columns [n, n + 16), + bias.
template <int G>
inline void store_groups(float* y, int64_t M, int64_t N, int64_t n, const float* bias) {
  alignas(64) float out[kMaxGroups][256];  // [g][16 n][16 m]
  _tile_stored(0, out[0], 64);
  if constexpr (G > 1) _tile_stored(1, out[1], 64);
  if constexpr (G > 2) _tile_stored(2, out[2], 64);
  if constexpr (G > 3) _tile_stored(3, out[3], 64);
  if constexpr (G > 4) _tile_stored(4, out[4], 64);
  for (int64_t m = 0; m < M; ++m)
    for (int i = 0; i < 16; ++i) y[m * N + n + i] = out[m / 16][i * 16 + m % 16] + (bias ? bias[n + i] : 0.f);
}

// 16 weight rows from row n against G groups of 16 x rows: A = tile 5 (16 rows x 32 k of W, stride K), loaded
// once per chunk for all groups.
// The hardware prefetchers keep up with 16 row streams: one row ran as fast as the vdpbf16ps GEMV (PLM-1B's decode
// matmuls 83-86 ms a step against 85-87 on 2 Xeon cores). Two or four blocks of weight rows at once (32, 64
// streams), software prefetches 256-2048 bytes ahead, or the next block's rows prefetched were 3-40% slower.
template <int G>
void row_block(const uint32_t* xb, int64_t M, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y,
               int64_t n) {
  const size_t stride = static_cast<size_t>(K) * 2;
  const uint8_t* w = W + static_cast<size_t>(n) * stride;
  zero_groups<G>();
  for (int64_t c = 0; c < K / kChunk; ++c) {
    _tile_loadd(5, w + c * 64, stride);
    group_products<G>(xb + c * G * 256);
  }
  store_groups<G>(y, M, N, n, bias);
}

}  // namespace

bool gemv_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (M < 1 || M > 16 * kMaxGroups || w.dtype != DType::kBF16 || w.quant != Quant::kNone || K <= 0 ||
      K % kChunk != 0 || N % kBlockRows != 0)
    return false;
  if (N <= 0) return true;
  thread_local std::vector<uint32_t> xb_buf;
  const int G = static_cast<int>((M + 15) / 16);
  xb_buf.resize(static_cast<size_t>(K / 2 * 16 * G + 16));
  uint32_t* xb = align64(xb_buf.data());  // [K/32][G][16][16] u32: the caller's buffer, read by the workers
  to_pair_tiles(x, M, K, G, xb);
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const int threads = pool ? pool->size() : 1;
  const auto [rows, tasks] = gemv_row_split(N, K * 2, threads, kBlockRows);
  run_tasks(pool, tasks, [&](int64_t t) {
    configure_tiles();
    for (int64_t n = t * rows; n < std::min(N, (t + 1) * rows); n += kBlockRows) {
      switch (G) {
        case 1: row_block<1>(xb, M, K, N, W, bias, y, n); break;
        case 2: row_block<2>(xb, M, K, N, W, bias, y, n); break;
        case 3: row_block<3>(xb, M, K, N, W, bias, y, n); break;
        case 4: row_block<4>(xb, M, K, N, W, bias, y, n); break;
        default: row_block<5>(xb, M, K, N, W, bias, y, n); break;
      }
    }
    _tile_release();
  });
  return true;
}

}  // namespace plm::cpu::kernels
