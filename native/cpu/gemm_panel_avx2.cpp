// AVX2+FMA matmul for many rows (M > 8: prefill, vision, the projector) on CPUs without AVX-512:
// y[M, N] = x[M, K] · W[N, K]^T + bias with f32 activations and accumulation, W in bf16/f16/f32 read in place.
// (AVX2 has no bf16 dot product, so precision "bf16" runs this kernel too.) The AVX-512 panel GEMM's scheme
// (gemm_avx512.cpp) on 8 lanes: a 16-column panel of W, KC deep, is widened to f32 and transposed once into a
// thread-local buffer [KC][16] (16 KiB at KC 256: L1), then reused by every 6-row micro-tile of the row block:
// 12 accumulators, 2 weight vectors and a broadcast of x, 16 registers.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/align.h"
#include "core/half.h"
#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

constexpr int kNP = 16;       // panel width (columns of y)
constexpr int kMR = 6;        // micro-tile rows
constexpr int64_t kKC = 256;  // K per panel slice
constexpr int64_t kMC = 240;  // rows per block (the x rows of a slice, 240 KiB, stay in L2)

template <DType D>
inline __m256 load8(const uint8_t* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * 2));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  } else if constexpr (D == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * 2)));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
}

template <DType D>
inline float load1(const uint8_t* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    uint16_t b;
    std::memcpy(&b, row + k * 2, 2);
    return bf16_to_f32(b);
  } else if constexpr (D == DType::kF16) {
    uint16_t h;
    std::memcpy(&h, row + k * 2, 2);
    return _cvtsh_ss(h);
  } else {
    float f;
    std::memcpy(&f, row + k * 4, 4);
    return f;
  }
}

// r[i] (8 floats each) -> r[j] = column j of the rows.
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  __m256 u[8];
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// W[n0 .. n0+nw)[kc .. kc+kb) -> wp[k][16] f32, columns >= nw zero.
template <DType D>
void pack_panel(const WeightMatrix& w, int64_t n0, int nw, int64_t kc, int64_t kb, float* wp) {
  constexpr size_t es = D == DType::kF32 ? 4 : 2;
  const size_t rb = static_cast<size_t>(w.cols) * es;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const int64_t kmain = kb & ~int64_t(7);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* rows[8];
    for (int j = 0; j < 8; ++j) {
      const int col = half * 8 + j;
      rows[j] = col < nw ? W + static_cast<size_t>(n0 + col) * rb : nullptr;
    }
    for (int64_t k = 0; k < kmain; k += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = rows[j] ? load8<D>(rows[j], kc + k) : _mm256_setzero_ps();
      transpose8x8(r);  // r[i]: k + i of the 8 columns
      for (int i = 0; i < 8; ++i) _mm256_store_ps(wp + (k + i) * kNP + half * 8, r[i]);
    }
    for (int64_t k = kmain; k < kb; ++k)
      for (int j = 0; j < 8; ++j) wp[k * kNP + half * 8 + j] = rows[j] ? load1<D>(rows[j], kc + k) : 0.f;
  }
}

// c[m][0 .. 16) += x[m][0 .. kb) · wp for MR rows (c row stride ldc). The accumulators are locals, read and
// written once (in the same function as the staging below, GCC kept them on the stack).
template <int MR>
void micro_core(const float* x, int64_t K, const float* wp, int64_t kb, float* c, int64_t ldc) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) c0[m] = _mm256_loadu_ps(c + m * ldc), c1[m] = _mm256_loadu_ps(c + m * ldc + 8);
  for (int64_t k = 0; k < kb; ++k) {
    const __m256 w0 = _mm256_load_ps(wp + k * kNP), w1 = _mm256_load_ps(wp + k * kNP + 8);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 xb = _mm256_broadcast_ss(x + m * K + k);
      c0[m] = _mm256_fmadd_ps(w0, xb, c0[m]);
      c1[m] = _mm256_fmadd_ps(w1, xb, c1[m]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) _mm256_storeu_ps(c + m * ldc, c0[m]), _mm256_storeu_ps(c + m * ldc + 8, c1[m]);
}

// y[m][0 .. nw) (+)= x · panel for MR rows: straight into y where the panel is whole and y holds a partial sum,
// else through a staging block (the bias as the start, or the nw < 16 columns of a partial panel).
template <int MR>
void micro(const float* x, int64_t K, const float* wp, int64_t kb, float* y, int64_t N, int nw, bool first,
           const float* bias) {
  if (nw == kNP && !first) return micro_core<MR>(x, K, wp, kb, y, N);
  alignas(32) float c[MR][kNP];
  for (int m = 0; m < MR; ++m) {
    std::memset(c[m], 0, sizeof(c[m]));
    if (!first) std::memcpy(c[m], y + m * N, sizeof(float) * nw);
    else if (bias) std::memcpy(c[m], bias, sizeof(float) * nw);
  }
  micro_core<MR>(x, K, wp, kb, c[0], kNP);
  for (int m = 0; m < MR; ++m) std::memcpy(y + m * N, c[m], sizeof(float) * nw);
}

template <DType D>
void gemm_block(const float* x, const WeightMatrix& w, const float* bias, float* y, int64_t m0, int64_t m1, int64_t n0,
                int64_t n1) {
  const int64_t K = w.cols, N = w.rows;
  thread_local std::vector<float> buf;
  buf.resize(kKC * kNP + 16);
  float* wp = align64(buf.data());
  for (int64_t kc = 0; kc < K; kc += kKC) {
    const int64_t kb = std::min(kKC, K - kc);
    for (int64_t np = n0; np < n1; np += kNP) {
      const int nw = static_cast<int>(std::min<int64_t>(kNP, n1 - np));
      pack_panel<D>(w, np, nw, kc, kb, wp);
      const float* bp = bias ? bias + np : nullptr;
      int64_t m = m0;
      for (; m + kMR <= m1; m += kMR) micro<kMR>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, kc == 0, bp);
      switch (m1 - m) {
        case 1: micro<1>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, kc == 0, bp); break;
        case 2: micro<2>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, kc == 0, bp); break;
        case 3: micro<3>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, kc == 0, bp); break;
        case 4: micro<4>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, kc == 0, bp); break;
        case 5: micro<5>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, kc == 0, bp); break;
        default: break;
      }
    }
  }
}

template <DType D>
void run(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows;
  const int threads = pool ? pool->size() : 1;
  const int64_t mblocks = (M + kMC - 1) / kMC;
  const auto [ncols, nchunks] = gemm_col_split(mblocks, N, threads, kNP);
  run_tasks(pool, mblocks * nchunks, [&](int64_t t) {
    const int64_t mb = t / nchunks, nc = t % nchunks;
    gemm_block<D>(x, w, bias, y, mb * kMC, std::min(M, (mb + 1) * kMC), nc * ncols, std::min(N, (nc + 1) * ncols));
  });
}

}  // namespace

bool matmul_avx2_panel_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                           ThreadPool* pool) {
  if (M <= 8) return false;  // the GEMV (gemm_avx2.cpp) takes decode
  if (w.rows <= 0) return true;
  switch (w.dtype) {
    case DType::kBF16: run<DType::kBF16>(x, M, w, bias, y, pool); return true;
    case DType::kF16: run<DType::kF16>(x, M, w, bias, y, pool); return true;
    case DType::kF32: run<DType::kF32>(x, M, w, bias, y, pool); return true;
    default: return false;
  }
}

}  // namespace plm::cpu::kernels
