// ARM64 BF16 matmul for many rows (M > 8: prefill, vision) in precision "bf16" on CPUs with FEAT_BF16
// (ARMv8.6-A; Neoverse V1/V2/N2, Graviton 3/4, Apple M2 and later): y[M, N] = bf16(x)[M, K] · W[N, K]^T + bias,
// bf16 weights, f32 accumulation in BFMMLA (each instruction: a 2x4 by 4x2 bf16 product into 2x2 f32).
// Compiled with +bf16 (CMakeLists.txt) and only called when the CPU reports it (HWCAP2_BF16, cpu_features()).
//
// Operands, per K slice of kKC: x rows rounded to bf16 (nearest even, BFCVTN) into row pairs [M/2][kKC/4][2][4]
// (one 16-byte vector per row pair and 4 k: the A operand of BFMMLA), once per row block; W columns into
// column pairs [N/2][kKC/4][2][4] (the B operand), per 8-column panel (L1). Micro-tile: 8 rows x 8 columns,
// 4 x 4 accumulators of 2x2 outputs; per 4 k: 4 A and 4 B loads, 16 BFMMLA. K is zero-padded to a multiple
// of 4, rows and columns to the tile (padding is never stored). On other CPUs and architectures the file
// compiles to nothing.
#if defined(__aarch64__)
#include <cstdint>
#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

constexpr int64_t kKC = 512;  // K per slice
constexpr int64_t kMC = 128;  // rows per block: its bf16 rows of a slice (128 KiB) stay in L2
constexpr int kNR = 8;        // panel and micro-tile width (4 column pairs)
constexpr int kMR = 8;        // micro-tile height (4 row pairs)

// Rows [m0, m0 + rows) of x, k in [kc, kc + kb), into ap: [rows/2 pairs][kbp/4][8] bf16, rows >= M and k >= K zero.
void pack_a(const float* x, int64_t M, int64_t K, int64_t m0, int64_t rows, int64_t kc, int64_t kb, int64_t kbp,
            bfloat16_t* ap) {
  for (int64_t p = 0; p < rows / 2; ++p) {
    const int64_t r0 = m0 + 2 * p, r1 = r0 + 1;
    bfloat16_t* dst = ap + p * kbp * 2;
    for (int64_t k = 0; k < kbp; k += 4) {
      float a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
      if (k + 4 <= kb) {
        if (r0 < M) std::memcpy(a, x + r0 * K + kc + k, sizeof(a));
        if (r1 < M) std::memcpy(b, x + r1 * K + kc + k, sizeof(b));
      } else {
        for (int64_t i = 0; i < kb - k; ++i) {
          if (r0 < M) a[i] = x[r0 * K + kc + k + i];
          if (r1 < M) b[i] = x[r1 * K + kc + k + i];
        }
      }
      vst1q_bf16(dst + k * 2, vcvtq_high_bf16_f32(vcvtq_low_bf16_f32(vld1q_f32(a)), vld1q_f32(b)));
    }
  }
}

// W columns [n0, n0 + 8) (rows of W), k in [kc, kc + kb), into bp: [4 pairs][kbp/4][8] bf16, columns >= N and
// k >= K zero.
void pack_b(const uint16_t* W, int64_t N, int64_t K, int64_t n0, int64_t kc, int64_t kb, int64_t kbp, uint16_t* bp) {
  for (int p = 0; p < kNR / 2; ++p) {
    const int64_t c0 = n0 + 2 * p, c1 = c0 + 1;
    uint16_t* dst = bp + p * kbp * 2;
    for (int64_t k = 0; k < kbp; k += 4) {
      uint16_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int64_t n = std::min<int64_t>(4, kb - k);
      if (c0 < N) std::memcpy(v, W + c0 * K + kc + k, static_cast<size_t>(n) * 2);
      if (c1 < N) std::memcpy(v + 4, W + c1 * K + kc + k, static_cast<size_t>(n) * 2);
      std::memcpy(dst + k * 2, v, sizeof(v));
    }
  }
}

// y[m0 .. m0+8)[n0 .. n0+8) (+)= the micro-tile's products over kbp k: a = the row pairs' packed block (row pair
// stride kbp * 2), b = the panel. Rows >= m_end and columns >= n_end are not stored. `first`: start from the
// bias (or zero) instead of y.
void micro(const bfloat16_t* a, const bfloat16_t* b, int64_t kbp, float* y, int64_t N, int64_t m0, int64_t m_end,
           int64_t n0, int64_t n_end, bool first, const float* bias) {
  float32x4_t acc[4][4];
  alignas(16) float c[kMR][kNR];
  for (int r = 0; r < kMR; ++r)
    for (int j = 0; j < kNR; ++j) {
      const int64_t m = m0 + r, n = n0 + j;
      c[r][j] = first ? (bias && n < n_end ? bias[n] : 0.f) : (m < m_end && n < n_end ? y[m * N + n] : 0.f);
    }
  // acc[i][j] holds rows 2i, 2i+1 x columns 2j, 2j+1 as [r0c0, r0c1, r1c0, r1c1].
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      const float32x2_t lo = vld1_f32(&c[2 * i][2 * j]), hi = vld1_f32(&c[2 * i + 1][2 * j]);
      acc[i][j] = vcombine_f32(lo, hi);
    }
  const int64_t stride = kbp * 2;  // bf16 elements between row pairs (and column pairs)
  for (int64_t k = 0; k < kbp; k += 4) {
    bfloat16x8_t av[4], bv[4];
    for (int i = 0; i < 4; ++i) av[i] = vld1q_bf16(a + i * stride + k * 2);
    for (int j = 0; j < 4; ++j) bv[j] = vld1q_bf16(b + j * stride + k * 2);
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = vbfmmlaq_f32(acc[i][j], av[i], bv[j]);
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      vst1_f32(&c[2 * i][2 * j], vget_low_f32(acc[i][j]));
      vst1_f32(&c[2 * i + 1][2 * j], vget_high_f32(acc[i][j]));
    }
  for (int r = 0; r < kMR && m0 + r < m_end; ++r) {
    const int64_t cols = std::min<int64_t>(kNR, n_end - n0);
    std::memcpy(y + (m0 + r) * N + n0, c[r], static_cast<size_t>(cols) * sizeof(float));
  }
}

void gemm_block(const float* x, int64_t M, int64_t K, int64_t N, const uint16_t* W, const float* bias, float* y,
                int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t rows = (m1 - m0 + kMR - 1) / kMR * kMR;
  thread_local std::vector<bfloat16_t> abuf;
  thread_local std::vector<uint16_t> bbuf;
  abuf.resize(static_cast<size_t>(rows * kKC));
  bbuf.resize(static_cast<size_t>(kNR * kKC));
  for (int64_t kc = 0; kc < K; kc += kKC) {
    const int64_t kb = std::min(kKC, K - kc), kbp = (kb + 3) / 4 * 4;
    pack_a(x, std::min(M, m1), K, m0, rows, kc, kb, kbp, abuf.data());
    for (int64_t n = n0; n < n1; n += kNR) {
      pack_b(W, std::min(N, n1), K, n, kc, kb, kbp, bbuf.data());
      const bfloat16_t* b = reinterpret_cast<const bfloat16_t*>(bbuf.data());
      for (int64_t m = m0; m < m1; m += kMR)
        micro(abuf.data() + (m - m0) / 2 * kbp * 2, b, kbp, y, N, m, m1, n, n1, kc == 0, bias);
    }
  }
}

}  // namespace

bool matmul_neon_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                      ThreadPool* pool) {
  if (w.dtype != DType::kBF16 || w.quant != Quant::kNone || M <= 8 || w.cols <= 0) return false;
  const int64_t N = w.rows, K = w.cols;
  if (N <= 0) return true;
  const uint16_t* W = static_cast<const uint16_t*>(w.data);
  const int threads = pool ? pool->size() : 1;
  const int64_t mblocks = (M + kMC - 1) / kMC;
  const auto [ncols, nchunks] = gemm_col_split(mblocks, N, threads, kNR);
  run_tasks(pool, mblocks * nchunks, [&](int64_t t) {
    const int64_t mb = t / nchunks, nc = t % nchunks;
    gemm_block(x, M, K, N, W, bias, y, mb * kMC, std::min(M, (mb + 1) * kMC), nc * ncols, std::min(N, (nc + 1) * ncols));
  });
  return true;
}

}  // namespace plm::cpu::kernels

#endif  // __aarch64__
