// AMX-BF16 matmul: y[M, N] = bf16(x)[M, K] · W[N, K]^T + bias with f32 accumulation in tile registers.
//
// Operands: A = the activations, rounded to bf16 once per call into a scratch in tile order
// [Mp/16][K/32][16 rows][32 k] (each A tile one contiguous KiB: strided rows 2-8 KiB apart fell into a few
// L1 sets and evicted each other). B = the weights, which AMX wants in VNNI pairs ([K/2][N][2]); W is
// bf16 [N, K] row-major in the mmap, so each 32-row panel of W is repacked into that layout in a
// thread-local buffer right before use and then reused by every row block of the task (M/32 times), so
// the mapped weights are never copied as a whole; or, where the caller prepacked the matrix once
// (WeightMatrix::bf16_tiles: the vision tower), the panels are read from that copy.
// C tiles come out row-major [16 m][16 n] and are written to y with the bias added, no transposes.
//
// Blocking: 32x32 outputs per step (2 A tiles x 2 B tiles, 4 accumulators), K in slices of 1024. Tasks
// are (M chunk of ~512 rows, N range); the chunk's bf16 rows of a slice and the packed W slice stay in L2.
// matmul_amx_bf16_group runs several matrices over one x: x converted once, all tasks in one region; an
// output's GELU or residual add (MatmulOut::epilogue) runs in the tile epilogue, overlapped with the next
// block's k-loop.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/align.h"
#include "core/half.h"
#include "cpu/amx_tiles.h"
#include "cpu/gemm_kernels.h"
#include "cpu/gemm_tiles_avx512.h"

namespace plm::cpu::kernels {
namespace {

inline void store_tile(const float* c, float* y, int64_t N, int64_t m0, int64_t M, int64_t n0, const float* bias) {
  const __m512 b = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
  const int rows = static_cast<int>(std::min<int64_t>(16, M - m0));
  for (int m = 0; m < rows; ++m) _mm512_storeu_ps(y + (m0 + m) * N + n0, _mm512_add_ps(_mm512_load_ps(c + m * 16), b));
}

// K is walked in slices of at most kKSlice, outermost: the task's bf16 rows of one slice (<= 1 MiB) stay in
// L2 while every W panel of the task passes over them (each panel's slice, 64 KiB, packed once and used by
// every row block), and the f32 partial sums of all (panel, row block) pairs wait in cbuf between slices.
// With the panels outermost instead, a K = 4096 or 8192 task re-read all its rows from L3 for each panel.
constexpr int64_t kKSlice = 1024;

// The epilogue (Epilogue::kGeluErf, kAccumulate, kSwiGLU, kRopeInterleaved) of a finished 32x32 block: its 4 C
// tiles wait here while the next block's k-loop runs, which finishes a few of their 64 row vectors per k step on
// the vector units as the matrix unit works. GELU (a division and an exp per 16 values), the residual add,
// SwiGLU and RoPE were separate passes over y. Products and sums are rounded apart where the pass did so (the
// _round forms are never fused into an FMA).
template <Epilogue E>
struct PendingBlock {
  alignas(64) float c[4][256];
  alignas(64) float gate[E == Epilogue::kSwiGLU ? 4 : 1][256];  // kSwiGLU: the gate block; c holds up's
  int64_t m = 0, n = 0;
  int next = 64;  // next of the 64 row vectors (tile * 16 + row) to finish; 64: nothing pending

  void run(int upto, const MatmulOut& out, int64_t N, int64_t M) {
    for (; next < upto; ++next) {
      const int t = next >> 4, r = next & 15;
      __m512 g = _mm512_setzero_ps();
      if constexpr (E == Epilogue::kSwiGLU) g = _mm512_load_ps(gate[t] + r * 16);
      finish16<E>(out, N, M, m + (t >> 1) * 16 + r, n + (t & 1) * 16, _mm512_load_ps(c[t] + r * 16), g);
    }
  }
};

inline void store_c(float* c) {
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

// One matrix's W panels: from the weights (packed here per call) or, when `packed` is set, from the
// prepacked copy ([N/32][K/32][2 KiB], WeightMatrix::bf16_tiles).
struct PanelSource {
  const uint8_t* W;
  const uint8_t* packed;
};

// Kernel tasks: columns [n0, n1) of rows [m0, m1). E: what is done with x·W^T + bias (cpu/matmul.h). kSwiGLU
// runs two matrices (src[0] gate, src[1] up) over the same columns, each block of gate then of up, so the
// epilogue has both.
template <Epilogue E>
void compute(const PanelSource* src, int64_t K, int64_t N, const uint16_t* xb, int64_t M, const MatmulOut& out,
             int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr bool kPending = E != Epilogue::kStore;
  constexpr int kMatrices = E == Epilogue::kSwiGLU ? 2 : 1;
  const int64_t ks = std::min(K, kKSlice), mblocks = (m1 - m0) / 32, panel_bytes = ks / 32 * 2048;
  alignas(64) float c[4][256];
  thread_local std::vector<uint8_t> panel;
  thread_local std::vector<float> partial;
  panel.resize(static_cast<size_t>(kMatrices * panel_bytes + 64));
  uint8_t* wp[kMatrices];
  for (int i = 0; i < kMatrices; ++i) wp[i] = align64(panel.data()) + i * panel_bytes;
  const bool sliced = ks < K;
  const int64_t panels = (n1 - n0) / 32;
  if (sliced) partial.resize(static_cast<size_t>(panels * mblocks * kMatrices * 1024 + 16));
  float* cbuf = sliced ? align64(partial.data()) : nullptr;  // [panels][mblocks][kMatrices][4 tiles][16][16] f32
  PendingBlock<E> epi;
  configure_tiles();
  for (int64_t k0 = 0; k0 < K; k0 += ks) {
    const bool first = k0 == 0, last = k0 + ks >= K;
    const int64_t kl = std::min(ks, K - k0);  // this slice's length (a multiple of 32)
    const int epi_step = static_cast<int>((64 + kl / 32 - 1) / (kl / 32));  // pending vectors per k step
    for (int64_t n = n0; n < n1; n += 32) {
      for (int i = 0; i < kMatrices; ++i) {
        if (src[i].packed) wp[i] = const_cast<uint8_t*>(src[i].packed) + ((n / 32) * (K / 32) + k0 / 32) * 2048;
        else pack_w_panel(src[i].W + k0 * 2, K, kl, n, wp[i]);
      }
      for (int64_t mb = 0; mb < mblocks; ++mb) {
        const int64_t m = m0 + mb * 32;
        const uint8_t* a0 = reinterpret_cast<const uint8_t*>(xb + a_tile_offset(m, k0 / 32, K));
        const uint8_t* a1 = reinterpret_cast<const uint8_t*>(xb + a_tile_offset(m + 16, k0 / 32, K));
        for (int i = 0; i < kMatrices; ++i) {
          float* cb = sliced ? cbuf + (((n - n0) / 32 * mblocks + mb) * kMatrices + i) * 1024 : nullptr;
          if (first) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
          } else {
            _tile_loadd(0, cb, 64);
            _tile_loadd(1, cb + 256, 64);
            _tile_loadd(2, cb + 512, 64);
            _tile_loadd(3, cb + 768, 64);
          }
          const uint8_t* w = wp[i];
          for (int64_t kc = 0; kc < kl / 32; ++kc) {
            _tile_loadd(4, a0 + kc * 1024, 64);
            _tile_loadd(5, a1 + kc * 1024, 64);
            _tile_loadd(6, w + kc * 2048, 64);
            _tile_loadd(7, w + kc * 2048 + 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            if (kPending) epi.run(std::min(64, epi.next + epi_step), out, N, M);
          }
          if (!last) {
            store_c(cb);
          } else if (kPending) {
            epi.run(64, out, N, M);
            if (kMatrices == 2 && i == 0) {  // gate's block waits for up's
              store_c(epi.gate[0]);
              continue;
            }
            store_c(epi.c[0]);
            epi.m = m;
            epi.n = n;
            epi.next = 0;
          } else {
            store_c(c[0]);
            store_tile(c[0], out.y, N, m, M, n, out.bias);
            store_tile(c[1], out.y, N, m, M, n + 16, out.bias);
            if (m + 16 < M) {
              store_tile(c[2], out.y, N, m + 16, M, n, out.bias);
              store_tile(c[3], out.y, N, m + 16, M, n + 16, out.bias);
            }
          }
        }
      }
    }
  }
  _tile_release();
  if (kPending) epi.run(64, out, N, M);
}

}  // namespace

bool matmul_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool) {
  const MatmulOut out{&w, bias, y};
  return matmul_amx_bf16_group(x, M, &out, 1, pool);
}

namespace {

// A K-sliced task parks the f32 partial sums of all its (panel, row block) pairs between slices; they must
// stay in L2 beside the slice's bf16 rows (<= 1 MiB), so tasks get at most this many bytes of them. The paired
// gate/up of SwiGLU at 512 rows had 32 panel pairs per task, 4 MiB of partials, written out to L3 and read
// back every slice: capped, 1.11-1.27x (in-process A/B at 512, 1046 and 1302 rows); plain outputs, whose
// partials were already <= 1 MiB, at parity.
constexpr int64_t kPartialBudget = 512 * 1024;

// All outputs' tasks over xb ([Mp/16][K/32][16][32] bf16) in one parallel region.
void run_group(const uint16_t* xb, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
  const int64_t K = outs[0].w->cols, Mp = (M + 31) / 32 * 32;
  const int threads = pool ? pool->size() : 1;
  // Row chunks of about 512 rows (equal sizes): a chunk's bf16 rows of one K slice stay in L2 (<= 1 MiB)
  // and each packed W slice serves 16 row blocks.
  const int64_t mchunks = (Mp + 511) / 512;
  const int64_t mc = ((Mp / 32 + mchunks - 1) / mchunks) * 32;
  // Task t belongs to the matrix whose range [first, first + mchunks * nchunks) holds it.
  struct Plan {
    int64_t first, ncols, nchunks;
  };
  Plan plans[8];
  int64_t tasks = 0;
  for (int i = 0; i < count; ++i) {
    auto [ncols, nchunks] = tile_col_split(mchunks, outs[i].w->rows / 32, threads);
    if (K > kKSlice) {  // parked partial sums: panels x row blocks x matrices x 4 KiB per task
      const int64_t panel_bytes = (mc / 32) * (outs[i].epilogue == Epilogue::kSwiGLU ? 2 : 1) * 4096;
      const int64_t cap = std::max<int64_t>(1, kPartialBudget / panel_bytes);
      if (ncols / 32 > cap) {
        ncols = cap * 32;
        nchunks = (outs[i].w->rows / 32 + cap - 1) / cap;
      }
    }
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

bool matmul_amx_bf16_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool,
                           const RowNorm* norm) {
  if (count == 0) return true;
  if (!group_supported(outs, count)) return false;
  if (M <= 0) return true;
  const int64_t K = outs[0].w->cols, Mp = (M + 31) / 32 * 32;  // rows padded to whole 32-row blocks (zeros)
  thread_local std::vector<uint16_t> scratch;
  scratch.resize(static_cast<size_t>(Mp * K) + 32);
  uint16_t* xb = align64(scratch.data());
  convert_x(x, M, Mp, K, xb, pool, norm);
  run_group(xb, M, outs, count, pool);
  return true;
}

bool matmul_amx_bf16_group_tiles(const uint16_t* xb, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
  if (count == 0) return true;
  if (!group_supported(outs, count) || (reinterpret_cast<uintptr_t>(xb) & 63) != 0) return false;
  if (M > 0) run_group(xb, M, outs, count, pool);
  return true;
}

void silu_mul_tiles_amx(const float* gate, const float* up, int64_t M, int64_t cols, uint16_t* tiles, ThreadPool* pool) {
  rows_to_tiles(M, (M + 31) / 32 * 32, cols, tiles, pool, [&](int64_t m, float*) {
    const float* g = gate + m * cols;
    const float* u = up + m * cols;
    return [g, u](int64_t k) { return silu_mul16(_mm512_loadu_ps(g + k), _mm512_loadu_ps(u + k)); };
  });
}

void pack_bf16_tiles_amx(const WeightMatrix& w, uint8_t* out, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  parallel_for(pool, N / 32, 4, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) pack_w_panel(W, K, K, p * 32, out + p * (K / 32) * 2048);
  });
}

}  // namespace plm::cpu::kernels
