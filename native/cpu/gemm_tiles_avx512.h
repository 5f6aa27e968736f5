// The pieces of the bf16 GEMM on tile-ordered operands shared by the AMX kernel (gemm_amx.cpp) and the
// AVX512-BF16 kernel (gemm_avx512bf16.cpp), so both read the same operands (TileActivations, prepacked
// WeightMatrix::bf16_tiles) and their fused prologues and epilogues give the same bits: the bf16 conversion of x
// (with an optional row norm), the W panel packing, and the epilogue of one 16-value output vector. Include only
// from files built with the AVX512-BF16 flags (*_amx.cpp, *_avx512.cpp, *_avx512bf16.cpp).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/activations16_avx512.h"
#include "cpu/gemm_kernels.h"
#include "cpu/norms.h"
#include "cpu/tiles_avx512.h"

namespace plm::cpu::kernels {
// Internal linkage: compiled with per-file ISA flags, never merged across files.
namespace {

// Rows into xb [Mp/16][K/32][16][32] bf16 (round to nearest even), rows M..Mp-1 zero. row(m, buf) returns row
// m as a function of k (a multiple of 16) giving its 16 f32 values at k; buf ([K], thread-local) is there for
// a row that must be computed whole first.
template <class Row>
void rows_to_tiles(int64_t M, int64_t Mp, int64_t K, uint16_t* xb, ThreadPool* pool, const Row& row) {
  parallel_for(pool, Mp, 16, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> buf;
    buf.resize(static_cast<size_t>(K));
    for (int64_t m = r0; m < r1; ++m) {
      uint16_t* dst = xb + a_tile_offset(m, 0, K) + (m % 16) * 32;
      if (m >= M) {
        for (int64_t kc = 0; kc < K / 32; ++kc) _mm512_store_si512(dst + kc * 512, _mm512_setzero_si512());
        continue;
      }
      const auto values = row(m, buf.data());
      for (int64_t kc = 0; kc < K / 32; ++kc)
        _mm512_store_si512(dst + kc * 512, (__m512i)_mm512_cvtne2ps_pbh(values(kc * 32 + 16), values(kc * 32)));
    }
  });
}

// x [M, K] f32 -> xb. With `norm`, each row is normed first by the same function the separate pass uses, so
// the bits are the same.
inline void convert_x(const float* x, int64_t M, int64_t Mp, int64_t K, uint16_t* xb, ThreadPool* pool, const RowNorm* norm) {
  rows_to_tiles(M, Mp, K, xb, pool, [&](int64_t m, float* buf) {
    const float* src = x + m * K;
    if (norm) {
      if (norm->kind == RowNorm::kLayerNorm) layer_norm(src, norm->weight, norm->bias, buf, 1, K, norm->eps);
      else rms_norm(src, norm->weight, buf, 1, K, norm->eps);
      src = buf;
    }
    return [src](int64_t k) { return _mm512_loadu_ps(src + k); };
  });
}

// W rows [n, n + 32), the ks columns starting at W -> wp: for each 32-wide k chunk, two B tiles (n 0-15, n 16-31), each
// [16 k-pairs][16 n][2] bf16 = 1 KiB, i.e. a 16x16 transpose of the 32-bit k-pairs.
inline void pack_w_panel(const uint8_t* W, int64_t K, int64_t ks, int64_t n, uint8_t* wp) {
  const int64_t kchunks = ks / 32, stride = K * 2;
  for (int64_t kc = 0; kc < kchunks; ++kc)
    for (int half = 0; half < 2; ++half) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = _mm512_loadu_si512(W + (n + half * 16 + i) * stride + kc * 64);
      transpose16x16_u32(r);
      uint8_t* dst = wp + kc * 2048 + half * 1024;
      for (int i = 0; i < 16; ++i) _mm512_store_si512(dst + i * 64, r[i]);
    }
}

// 16 values of row `row`, columns col .. col+15 (inside one head: head_dim % 16 == 0), through
// rope_interleaved_rows' arithmetic (cpu/rope.h): pair p = (a, b) -> (a·c − b·s, b·c + a·s), each product
// rounded, rows whose position in their image is below the prefix and columns from r.cols on unchanged.
inline __m512 rope16(const RopeInterleaved& r, int64_t row, int64_t col, __m512 v) {
  const int64_t t = row % r.tokens;
  if (t < r.prefix || col >= r.cols) return v;
  const int64_t pairs = r.head_dim / 2, p0 = (col % r.head_dim) / 2;
  const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512 c = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(r.cos + (t - r.prefix) * pairs + p0)));
  const __m512 s = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(r.sin + (t - r.prefix) * pairs + p0)));
  const __m512 swapped = _mm512_permute_ps(v, 0xB1);  // (b, a) in each pair
  const __m512 vc = _mm512_mul_round_ps(v, c, _MM_FROUND_CUR_DIRECTION);
  const __m512 ws = _mm512_mul_round_ps(swapped, s, _MM_FROUND_CUR_DIRECTION);
  // even lanes a·c − b·s, odd lanes b·c + a·s
  return _mm512_mask_add_round_ps(_mm512_sub_round_ps(vc, ws, _MM_FROUND_CUR_DIRECTION), 0xAAAA, vc, ws,
                                  _MM_FROUND_CUR_DIRECTION);
}

// What a matmul does with one finished output vector: row `row`, columns col .. col+15 of x·W^T, `acc` the
// f32 sum (without bias) and, for kSwiGLU, `gate` the gate matrix's sum at the same place (cpu/matmul.h
// Epilogue). Rows from M on are padding: nothing is stored but zeros into tile outputs. Products and sums are
// rounded apart where the separate passes did so (the _round forms are never fused into an FMA).
template <Epilogue E>
inline void finish16(const MatmulOut& out, int64_t N, int64_t M, int64_t row, int64_t col, __m512 acc, __m512 gate) {
  const float *bias = out.bias, *scale = out.scale;
  float* y = out.y;
  uint16_t* tiles = out.tiles;
  // tiles (kGeluErf, kSwiGLU): bf16 in A-tile order for a next matmul with K = N.
  __m256i* tile_row =
      tiles ? reinterpret_cast<__m256i*>(tiles + a_tile_offset(row, col / 32, N) + (row % 16) * 32 + col % 32) : nullptr;
  if (row >= M) {
    if (tile_row) _mm256_storeu_si256(tile_row, _mm256_setzero_si256());
    return;
  }
  const __m512 b = bias ? _mm512_loadu_ps(bias + col) : _mm512_setzero_ps();
  const __m512 v = _mm512_add_ps(acc, b);
  if constexpr (E == Epilogue::kStore) {
    _mm512_storeu_ps(y + row * N + col, v);
  } else if constexpr (E == Epilogue::kSwiGLU) {
    // As matmul_group's stores (+ 0: no bias) then silu_mul_to_tiles: the same bits.
    const __m512 g = _mm512_add_ps(gate, _mm512_setzero_ps());
    _mm256_storeu_si256(tile_row, (__m256i)_mm512_cvtneps_pbh(silu_mul16(g, v)));
  } else if constexpr (E == Epilogue::kRopeInterleaved) {
    _mm512_storeu_ps(y + row * N + col, rope16(*out.rope, row, col, v));
  } else if constexpr (E == Epilogue::kGeluErf) {
    if (tile_row)
      _mm256_storeu_si256(tile_row, (__m256i)_mm512_cvtneps_pbh(gelu16(v)));
    else
      _mm512_storeu_ps(y + row * N + col, gelu16(v));
  } else {
    float* dst = y + row * N + col;
    const __m512 add = scale ? _mm512_mul_round_ps(_mm512_loadu_ps(scale + col), v, _MM_FROUND_CUR_DIRECTION) : v;
    _mm512_storeu_ps(dst, _mm512_add_round_ps(_mm512_loadu_ps(dst), add, _MM_FROUND_CUR_DIRECTION));
  }
}

inline bool rope_supported(const RopeInterleaved* r) {
  return r && r->cos && r->sin && r->tokens > 0 && r->prefix >= 0 && r->prefix < r->tokens && r->head_dim > 0 &&
         r->head_dim % 16 == 0 && r->cols % 16 == 0;
}

// Shapes and epilogues the kernel covers: bf16 weights with a common K, K and every N multiples of 32, at
// most 8 outputs, tile output only after GELU.
inline bool group_supported(const MatmulOut* outs, int count) {
  if (count <= 0 || count > 8) return false;
  const int64_t K = outs[0].w->cols;
  for (int i = 0; i < count; ++i) {
    const WeightMatrix& w = *outs[i].w;
    if (w.quant != Quant::kNone || w.dtype != DType::kBF16 || w.cols != K || K % 32 != 0 || w.rows % 32 != 0 || K == 0)
      return false;
    if (outs[i].epilogue == Epilogue::kSwiGLU) {
      const WeightMatrix* u = outs[i].w_up;
      if (!outs[i].tiles || outs[i].bias || !u || u->quant != Quant::kNone || u->dtype != DType::kBF16 ||
          u->rows != w.rows || u->cols != K)
        return false;
    } else if (outs[i].tiles && outs[i].epilogue != Epilogue::kGeluErf) {
      return false;
    }
    if (outs[i].epilogue == Epilogue::kRopeInterleaved && !rope_supported(outs[i].rope)) return false;
  }
  return true;
}

// Column chunks (whole 32-wide panels) for mchunks row chunks on `threads` threads: at least 4 tasks per
// thread, a task count that is a multiple of the thread count and equal chunks where the panels allow, so
// no thread idles at the end (the old split gave 9 equal tasks to 2 threads for every PE-L shape at one
// tile: one thread ran 5, the other 4).
inline ColSplit tile_col_split(int64_t mchunks, int64_t panels, int threads) {
  if (panels <= 0) return {32, 0};
  const int64_t want = std::max<int64_t>(1, (4 * threads + mchunks - 1) / mchunks);
  int64_t best = 0;
  for (int64_t n = want; n <= std::min<int64_t>(panels, 4 * want) && !best; ++n)
    if (panels % n == 0 && (mchunks * n) % threads == 0) best = n;
  const int64_t nchunks = std::min<int64_t>(panels, best ? best : want);
  const int64_t per = (panels + nchunks - 1) / nchunks;  // panels per chunk
  return {per * 32, (panels + per - 1) / per};
}

}  // namespace
}  // namespace plm::cpu::kernels
