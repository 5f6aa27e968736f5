// AVX512-BF16 matmul for CPUs without AMX (AMD Zen 4/5, Intel Cooper Lake): y[M, N] = bf16(x)[M, K] · W[N, K]^T
// + bias with f32 accumulation in vdpbf16ps (each instruction: 16 outputs += 2 products of bf16 pairs).
//
// Operands are the AMX kernel's (gemm_amx.cpp, shared pieces in gemm_tiles_avx512.h): x rounded to bf16 once
// per call into the tile order [Mp/16][K/32][16 rows][32 k] (or handed over in that order by the previous
// matmul, TileActivations), W packed per 32-row panel into [K/32][2 halves][16 k-pairs][16 n][2] (or read
// from the prepacked WeightMatrix::bf16_tiles). A panel half's 16 k-pair rows are exactly the B vectors of
// vdpbf16ps: 16 columns x one k pair each. So the same fused prologue (LayerNorm/RMSNorm into the conversion)
// and epilogues (GELU, residual add, SwiGLU, the ViT's RoPE, bf16 tile output) apply, with the same bits.
//
// Micro-tile: kMR rows x 64 columns (two panels), 4 x 4 = 16 f32 accumulators; per k pair 4 B loads, kMR
// broadcasts and 4·kMR vdpbf16ps. K goes in slices of kKSlice so that the two panels' slice (32 KiB at 256)
// stays in L1 while every micro-tile of the task's rows passes over it; partial sums are parked between slices.
// Tasks are (row chunk of ~512 rows, column range), like the AMX kernel's.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/align.h"
#include "cpu/gemm_kernels.h"
#include "cpu/gemm_tiles_avx512.h"

namespace plm::cpu::kernels {
namespace {

constexpr int kMR = 4;           // rows per micro-tile (divides 16: a micro-tile never crosses an A tile)
constexpr int64_t kKSlice = 256;  // K per slice: 2 panels x 256 k x 64 B = 32 KiB of B in L1
// Parked partial sums per task at most this many bytes (rows x columns x 4 x matrices), so they stay in L2.
constexpr int64_t kPartialBudget = 512 * 1024;

inline __m512bh bcast_pair(const uint16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return (__m512bh)_mm512_set1_epi32(v);
}

// c[r][j] (row r at c + r * ldc, 16 columns at + j * 16, j < 2 * NP; zero instead of read where `fresh`) +=
// sum over the kchunks * 32 k of a[r][k] * W[n + 16 j + lane][k], for kMR rows starting at `a` (row r at
// a + r * 32, k chunk kc at + kc * 512: the tile order) and NP panels whose slices start at w0, w1 (chunk kc at
// + kc * 2048 bytes, half h at + h * 1024, k pair q at + q * 64). The accumulators are locals (all 16 stay in
// registers: through a reference the compiler moved them around), c is read once and written once.
template <int NP>
void micro(const uint16_t* a, const uint8_t* w0, const uint8_t* w1, int64_t kchunks, float* c, int64_t ldc, bool fresh) {
  __m512 acc[kMR][2 * NP];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 2 * NP; ++j) acc[r][j] = fresh ? _mm512_setzero_ps() : _mm512_load_ps(c + r * ldc + j * 16);
  for (int64_t kc = 0; kc < kchunks; ++kc) {
    const uint16_t* ak = a + kc * 512;
    const uint8_t* b0 = w0 + kc * 2048;
    const uint8_t* b1 = w1 + kc * 2048;
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) {
      __m512bh b[2 * NP];
      b[0] = (__m512bh)_mm512_load_si512(b0 + q * 64);
      b[1] = (__m512bh)_mm512_load_si512(b0 + 1024 + q * 64);
      if constexpr (NP > 1) {
        b[2] = (__m512bh)_mm512_load_si512(b1 + q * 64);
        b[3] = (__m512bh)_mm512_load_si512(b1 + 1024 + q * 64);
      }
#pragma GCC unroll 8
      for (int r = 0; r < kMR; ++r) {
        const __m512bh x = bcast_pair(ak + r * 32 + q * 2);
#pragma GCC unroll 4
        for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], x, b[j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 2 * NP; ++j) _mm512_store_ps(c + r * ldc + j * 16, acc[r][j]);
}

// One matrix's W panels: from the weights (packed here per call) or from the prepacked copy.
struct PanelSource {
  const uint8_t* W;
  const uint8_t* packed;
};

// Columns [n0, n1) of rows [m0, m1) (m0, m1 multiples of 32; rows from M on are padding). E: the epilogue
// (cpu/matmul.h); kSwiGLU runs gate (src[0]) and up (src[1]) over the same columns.
template <Epilogue E>
void compute(const PanelSource* src, int64_t K, int64_t N, const uint16_t* xb, int64_t M, const MatmulOut& out,
             int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int kMatrices = E == Epilogue::kSwiGLU ? 2 : 1;
  const int64_t ks = std::min(K, kKSlice), slice_bytes = ks / 32 * 2048;
  // Rows computed: up to the last micro-tile holding a real row; the rest of the chunk is padding.
  const int64_t mend = std::min(m1, std::max(m0, (M + kMR - 1) / kMR * kMR));
  const int64_t rows = mend - m0, cols = n1 - n0;
  thread_local std::vector<uint8_t> panel;
  thread_local std::vector<float> partial;
  panel.resize(static_cast<size_t>(kMatrices * 2 * slice_bytes + 64));
  const bool sliced = ks < K;
  if (sliced) partial.resize(static_cast<size_t>(kMatrices * rows * cols + 16));
  float* pbuf = sliced ? align64(partial.data()) : nullptr;  // [kMatrices][rows][cols] f32
  for (int64_t k0 = 0; k0 < K; k0 += ks) {
    const bool first = k0 == 0, last = k0 + ks >= K;
    const int64_t kl = std::min(ks, K - k0);
    for (int64_t n = n0; n < n1; n += 64) {
      const int np = n + 64 <= n1 ? 2 : 1;
      const uint8_t* wp[2][2];
      for (int i = 0; i < kMatrices; ++i)
        for (int p = 0; p < np; ++p) {
          const int64_t col = n + 32 * p;
          if (src[i].packed) {
            wp[i][p] = src[i].packed + ((col / 32) * (K / 32) + k0 / 32) * 2048;
          } else {
            uint8_t* dst = align64(panel.data()) + (i * 2 + p) * slice_bytes;
            pack_w_panel(src[i].W + k0 * 2, K, kl, col, dst);
            wp[i][p] = dst;
          }
        }
      for (int64_t m = m0; m < mend; m += kMR) {
        const uint16_t* a = xb + a_tile_offset(m, k0 / 32, K) + (m % 16) * 32;
        alignas(64) float gate[kMR][64], cbuf[kMR][64];  // [row][column] f32 of the micro-tile
        for (int i = 0; i < kMatrices; ++i) {
          // Sums go to the parked partials until the last slice, then to cbuf (or gate) for the epilogue.
          float* park = sliced ? pbuf + (i * rows + (m - m0)) * cols + (n - n0) : nullptr;
          float* c = last ? (kMatrices == 2 && i == 0 ? gate[0] : cbuf[0]) : park;
          const int64_t ldc = last ? 64 : cols;
          if (last && !first) {  // bring the parked sums over
            for (int r = 0; r < kMR; ++r)
              for (int j = 0; j < 2 * np; ++j) _mm512_store_ps(c + r * 64 + j * 16, _mm512_load_ps(park + r * cols + j * 16));
          }
          if (np == 2) micro<2>(a, wp[i][0], wp[i][1], kl / 32, c, ldc, first);
          else micro<1>(a, wp[i][0], wp[i][0], kl / 32, c, ldc, first);
          if (!last || (kMatrices == 2 && i == 0)) continue;  // gate waits for up
          for (int r = 0; r < kMR; ++r)
            for (int j = 0; j < 2 * np; ++j)
              finish16<E>(out, N, M, m + r, n + 16 * j, _mm512_load_ps(cbuf[r] + j * 16),
                          kMatrices == 2 ? _mm512_load_ps(gate[r] + j * 16) : _mm512_setzero_ps());
        }
      }
    }
  }
  // Padding rows past the last computed micro-tile: tile outputs get their zeros (as the AMX kernel writes them).
  if (out.tiles)
    for (int64_t m = mend; m < m1; ++m)
      for (int64_t n = n0; n < n1; n += 16) finish16<E>(out, N, M, m, n, _mm512_setzero_ps(), _mm512_setzero_ps());
}

// All outputs' tasks over xb ([Mp/16][K/32][16][32] bf16) in one parallel region.
void run_group(const uint16_t* xb, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
  const int64_t K = outs[0].w->cols, Mp = (M + 31) / 32 * 32;
  const int threads = pool ? pool->size() : 1;
  // Row chunks of about 512 rows (equal sizes, multiples of 32): a chunk's bf16 rows of one K slice stay in L2.
  const int64_t mchunks = (Mp + 511) / 512;
  const int64_t mc = ((Mp / 32 + mchunks - 1) / mchunks) * 32;
  struct Plan {
    int64_t first, ncols, nchunks;
  };
  Plan plans[8];
  int64_t tasks = 0;
  for (int i = 0; i < count; ++i) {
    const int64_t N = outs[i].w->rows;
    // Column ranges in whole 64-column panel pairs where N allows (a 32-column tail otherwise).
    const int64_t unit = N % 64 == 0 ? 64 : 32;
    auto [ncols, nchunks] = tile_col_split(mchunks, N / unit, threads);
    ncols = ncols / 32 * unit;
    if (K > kKSlice) {
      const int64_t per_unit = mc * unit * 4 * (outs[i].epilogue == Epilogue::kSwiGLU ? 2 : 1);
      const int64_t cap = std::max<int64_t>(1, kPartialBudget / per_unit);
      if (ncols / unit > cap) ncols = cap * unit;
    }
    nchunks = (N + ncols - 1) / ncols;
    plans[i] = {tasks, ncols, nchunks};
    tasks += mchunks * nchunks;
  }
  auto fn = [&](int64_t t) {
    int i = 0;
    while (i + 1 < count && t >= plans[i + 1].first) ++i;
    const WeightMatrix& w = *outs[i].w;
    const int64_t N = w.rows, local = t - plans[i].first, mi = local / plans[i].nchunks, ni = local % plans[i].nchunks;
    auto* run = outs[i].epilogue == Epilogue::kGeluErf          ? &compute<Epilogue::kGeluErf>
                : outs[i].epilogue == Epilogue::kAccumulate     ? &compute<Epilogue::kAccumulate>
                : outs[i].epilogue == Epilogue::kSwiGLU         ? &compute<Epilogue::kSwiGLU>
                : outs[i].epilogue == Epilogue::kRopeInterleaved ? &compute<Epilogue::kRopeInterleaved>
                                                                : &compute<Epilogue::kStore>;
    const auto source = [](const WeightMatrix* m) {
      return m ? PanelSource{static_cast<const uint8_t*>(m->data), static_cast<const uint8_t*>(m->bf16_tiles)}
               : PanelSource{};
    };
    const PanelSource src[2] = {source(&w), source(outs[i].w_up)};
    run(src, K, N, xb, M, outs[i], mi * mc, std::min(Mp, (mi + 1) * mc), ni * plans[i].ncols,
        std::min(N, (ni + 1) * plans[i].ncols));
  };
  run_tasks(pool, tasks, fn);
}

}  // namespace

bool matmul_avx512bf16_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool,
                             const RowNorm* norm) {
  if (count == 0) return true;
  if (!group_supported(outs, count)) return false;
  if (M <= 0) return true;
  const int64_t K = outs[0].w->cols, Mp = (M + 31) / 32 * 32;
  thread_local std::vector<uint16_t> scratch;
  scratch.resize(static_cast<size_t>(Mp * K) + 32);
  uint16_t* xb = align64(scratch.data());
  convert_x(x, M, Mp, K, xb, pool, norm);
  run_group(xb, M, outs, count, pool);
  return true;
}

bool matmul_avx512bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                       ThreadPool* pool) {
  const MatmulOut out{&w, bias, y};
  return matmul_avx512bf16_group(x, M, &out, 1, pool);
}

bool matmul_avx512bf16_group_tiles(const uint16_t* xb, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
  if (count == 0) return true;
  if (!group_supported(outs, count) || (reinterpret_cast<uintptr_t>(xb) & 63) != 0) return false;
  if (M > 0) run_group(xb, M, outs, count, pool);
  return true;
}

void silu_mul_tiles_avx512bf16(const float* gate, const float* up, int64_t M, int64_t cols, uint16_t* tiles,
                               ThreadPool* pool) {
  rows_to_tiles(M, (M + 31) / 32 * 32, cols, tiles, pool, [&](int64_t m, float*) {
    const float* g = gate + m * cols;
    const float* u = up + m * cols;
    return [g, u](int64_t k) { return silu_mul16(_mm512_loadu_ps(g + k), _mm512_loadu_ps(u + k)); };
  });
}

void pack_bf16_tiles_avx512bf16(const WeightMatrix& w, uint8_t* out, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  parallel_for(pool, N / 32, 4, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) pack_w_panel(W, K, K, p * 32, out + p * (K / 32) * 2048);
  });
}

}  // namespace plm::cpu::kernels
