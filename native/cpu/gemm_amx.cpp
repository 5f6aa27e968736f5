// AMX-BF16 matmul: y[M, N] = bf16(x)[M, K] · W[N, K]^T + bias with f32 accumulation in tile registers.
//
// Layout choice: the product is computed transposed, y^T = W · x^T, so that W — bf16, [N, K] row-major in the
// mmap — is the A operand and is loaded into tiles straight from the mapped file (tileloadd with a K*2 byte
// stride). Only the activations need the VNNI pair layout AMX wants for B; they are converted from f32 and
// packed once per matmul (M*K*2 bytes of scratch, small next to the weights). No weight is ever copied or
// pre-packed, so resident memory stays at the weight bytes. Each 16x16 f32 result tile is transposed with
// AVX-512 shuffles on the way out, and the bias added there.
//
// Blocking: 32x32 outputs per step (2 A tiles of W rows x 2 B tiles of x rows, 4 accumulators), full K
// per step. Tasks are (M chunk, N range); the M chunk's packed activations (<= 1 MiB) stay in L2 while the
// range's W rows stream through.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "cpu/amx_tiles.h"
#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {


// 16x16 f32 transpose: out[j][i] = in[i][j] (row strides 16).
inline void transpose16(const float* in, __m512 out[16]) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(in + i * 16);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    out[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    out[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// x [M, K] f32 -> xp: blocks of 16 rows; within a block, K/32 chunks of [16 pairs][16 rows][2] bf16.
void pack_x(const float* x, int64_t M, int64_t K, int64_t row_blocks, uint16_t* xp, ThreadPool* pool) {
  const int64_t kchunks = K / 32;
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(16));
  auto fn = [&](int64_t b0, int64_t b1) {
    for (int64_t rb = b0; rb < b1; ++rb) {
      uint16_t* blk = xp + rb * kchunks * 512;
      for (int r = 0; r < 16; ++r) {
        const int64_t m = rb * 16 + r;
        for (int64_t kc = 0; kc < kchunks; ++kc) {
          uint32_t* dst = reinterpret_cast<uint32_t*>(blk + kc * 512) + r;
          if (m >= M) {
            _mm512_i32scatter_epi32(dst, idx, _mm512_setzero_si512(), 4);
            continue;
          }
          const float* src = x + m * K + kc * 32;
          __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 16), _mm512_loadu_ps(src));
          _mm512_i32scatter_epi32(dst, idx, (__m512i)v, 4);
        }
      }
    }
  };
  if (pool) pool->parallel_for(row_blocks, 1, fn);
  else fn(0, row_blocks);
}

inline void store_tile(const float* c, float* y, int64_t N, int64_t m0, int64_t M, int64_t n0, const float* bias) {
  __m512 o[16];
  transpose16(c, o);
  const __m512 b = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
  const int rows = static_cast<int>(std::min<int64_t>(16, M - m0));
  for (int m = 0; m < rows; ++m) _mm512_storeu_ps(y + (m0 + m) * N + n0, _mm512_add_ps(o[m], b));
}

void compute(const uint8_t* W, int64_t K, int64_t N, const uint16_t* xp, int64_t M, const float* bias, float* y,
             int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t kchunks = K / 32, stride = K * 2;
  alignas(64) float c[4][256];
  configure_tiles();
  for (int64_t n = n0; n < n1; n += 32) {
    const uint8_t* a0 = W + n * stride;
    const uint8_t* a1 = a0 + 16 * stride;
    for (int64_t m = m0; m < m1; m += 32) {
      const uint16_t* b0 = xp + (m / 16) * kchunks * 512;
      const uint16_t* b1 = b0 + kchunks * 512;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t kc = 0; kc < kchunks; ++kc) {
        _tile_loadd(4, a0 + kc * 64, stride);
        _tile_loadd(5, a1 + kc * 64, stride);
        _tile_loadd(6, b0 + kc * 512, 64);
        _tile_loadd(7, b1 + kc * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c[0], 64);
      _tile_stored(1, c[1], 64);
      _tile_stored(2, c[2], 64);
      _tile_stored(3, c[3], 64);
      store_tile(c[0], y, N, m, M, n, bias);
      if (m + 16 < M) store_tile(c[1], y, N, m + 16, M, n, bias);
      store_tile(c[2], y, N, m, M, n + 16, bias);
      if (m + 16 < M) store_tile(c[3], y, N, m + 16, M, n + 16, bias);
    }
  }
  _tile_release();
}

}  // namespace

bool matmul_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (w.dtype != DType::kBF16 || K % 32 != 0 || N % 32 != 0 || K == 0) return false;
  if (M <= 0 || N == 0) return true;
  const int64_t row_blocks = (M + 31) / 32 * 2;  // 16-row blocks, padded to an even count
  thread_local std::vector<uint16_t> scratch;
  scratch.resize(static_cast<size_t>(row_blocks * 16 * K) + 32);
  uint16_t* xp = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t(63));
  pack_x(x, M, K, row_blocks, xp, pool);

  const int threads = pool ? pool->size() : 1;
  const int64_t Mp = row_blocks * 16;
  const int64_t mc = std::max<int64_t>(32, std::min<int64_t>(Mp, (int64_t(1) << 20) / (K * 2) / 32 * 32));
  const int64_t mchunks = (Mp + mc - 1) / mc;
  int64_t nchunks = std::max<int64_t>(1, (4 * threads + mchunks - 1) / mchunks);
  int64_t ncols = std::max<int64_t>(32, ((N + nchunks - 1) / nchunks + 31) / 32 * 32);
  nchunks = (N + ncols - 1) / ncols;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  auto fn = [&](int64_t t) {
    const int64_t mi = t / nchunks, ni = t % nchunks;
    compute(W, K, N, xp, M, bias, y, mi * mc, std::min(Mp, (mi + 1) * mc), ni * ncols, std::min(N, (ni + 1) * ncols));
  };
  const int64_t tasks = mchunks * nchunks;
  if (pool && tasks > 1) pool->run_tasks(tasks, fn);
  else for (int64_t t = 0; t < tasks; ++t) fn(t);
  return true;
}

}  // namespace plm::cpu::kernels
