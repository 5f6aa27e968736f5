// ARM64 NEON matmul with f32 activations: y[M, N] = x[M, K] · W[N, K]^T + bias, W in bf16/f16/f32 read in
// place from the mmap (bf16 widened by a 16-bit shift, vshll_n_u16; f16 by vcvt_f32_f16), f32 FMA accumulation.
// NEON (Advanced SIMD) is part of ARMv8-A, so every aarch64 CPU runs this file: no run-time check, and no
// special compile flags. On other architectures the file compiles to nothing.
//  - M <= 8 (decode): GEMV. N is split into row ranges across the pool so every core streams its own share of
//    the weights once; each pass keeps 2-8 weight rows x M activation rows of accumulators in registers.
//  - M > 8 (prefill, vision): a panel GEMM. A 16-column panel of W (kKC deep) is widened and transposed once
//    into a thread-local f32 buffer, then reused by every 4-row micro-tile of the M block (16 accumulators,
//    one FMA per weight vector and x lane).
#if defined(__aarch64__)
#include <cstdint>
#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/half.h"
#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

template <DType D>
constexpr size_t esize() {
  return D == DType::kF32 ? 4 : 2;
}

// Elements [k, k + 8) of a weight row as two f32 vectors.
template <DType D>
inline void load8(const void* row, int64_t k, float32x4_t& lo, float32x4_t& hi) {
  if constexpr (D == DType::kBF16) {
    const uint16x8_t v = vld1q_u16(static_cast<const uint16_t*>(row) + k);
    lo = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16));
    hi = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(v), 16));
  } else if constexpr (D == DType::kF16) {
    const float16x8_t v = vreinterpretq_f16_u16(vld1q_u16(static_cast<const uint16_t*>(row) + k));
    lo = vcvt_f32_f16(vget_low_f16(v));
    hi = vcvt_high_f32_f16(v);
  } else {
    const float* p = static_cast<const float*>(row) + k;
    lo = vld1q_f32(p);
    hi = vld1q_f32(p + 4);
  }
}

// Elements [k, k + 4).
template <DType D>
inline float32x4_t load4(const void* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(static_cast<const uint16_t*>(row) + k), 16));
  } else if constexpr (D == DType::kF16) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(static_cast<const uint16_t*>(row) + k)));
  } else {
    return vld1q_f32(static_cast<const float*>(row) + k);
  }
}

template <DType D>
inline float load1(const void* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    return bf16_to_f32(static_cast<const uint16_t*>(row)[k]);
  } else if constexpr (D == DType::kF16) {
    return f16_to_f32(static_cast<const uint16_t*>(row)[k]);
  } else {
    return static_cast<const float*>(row)[k];
  }
}

// ---- GEMV (M <= 8) ----

// Rows [n0, n1) of y for MR activation rows, NR weight rows per pass. Per 8 k: the NR weight rows are
// widened into registers once, then every x row's two vectors meet all of them.
template <DType D, int MR, int NR>
void gemv_range(const float* x, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t n0,
                int64_t n1) {
  const size_t rb = static_cast<size_t>(K) * esize<D>();
  const int64_t kmain = K & ~int64_t(7);
  for (int64_t n = n0; n < n1; n += NR) {
    const int R = static_cast<int>(std::min<int64_t>(NR, n1 - n));
    const uint8_t* wr[NR];
    for (int r = 0; r < NR; ++r) wr[r] = W + static_cast<size_t>(n + std::min(r, R - 1)) * rb;
    float32x4_t acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MR; ++m) acc[r][m] = vdupq_n_f32(0.f);
    for (int64_t k = 0; k < kmain; k += 8) {
      float32x4_t wl[NR], wh[NR];
      for (int r = 0; r < NR; ++r) {
        __builtin_prefetch(wr[r] + (k + 256) * esize<D>());
        load8<D>(wr[r], k, wl[r], wh[r]);
      }
      for (int m = 0; m < MR; ++m) {
        const float32x4_t xl = vld1q_f32(x + m * K + k);
        for (int r = 0; r < NR; ++r) acc[r][m] = vfmaq_f32(acc[r][m], wl[r], xl);
      }
      for (int m = 0; m < MR; ++m) {
        const float32x4_t xh = vld1q_f32(x + m * K + k + 4);
        for (int r = 0; r < NR; ++r) acc[r][m] = vfmaq_f32(acc[r][m], wh[r], xh);
      }
    }
    if (K - kmain >= 4) {
      float32x4_t wl[NR];
      for (int r = 0; r < NR; ++r) wl[r] = load4<D>(wr[r], kmain);
      for (int m = 0; m < MR; ++m) {
        const float32x4_t xl = vld1q_f32(x + m * K + kmain);
        for (int r = 0; r < NR; ++r) acc[r][m] = vfmaq_f32(acc[r][m], wl[r], xl);
      }
    }
    const int64_t ktail = kmain + ((K - kmain) & 4);
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MR; ++m) {
        float s = vaddvq_f32(acc[r][m]);
        for (int64_t k = ktail; k < K; ++k) s += load1<D>(wr[r], k) * x[m * K + k];
        y[m * N + n + r] = s + (bias ? bias[n + r] : 0.f);
      }
  }
}

template <DType D>
void gemv(const float* x, int64_t M, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t n0,
          int64_t n1) {
  // Accumulators NR*MR + weights 2*NR + one x vector stay within the 32 vector registers.
  switch (M) {
    case 1: gemv_range<D, 1, 8>(x, K, N, W, bias, y, n0, n1); break;
    case 2: gemv_range<D, 2, 4>(x, K, N, W, bias, y, n0, n1); break;
    case 3: gemv_range<D, 3, 4>(x, K, N, W, bias, y, n0, n1); break;
    case 4: gemv_range<D, 4, 4>(x, K, N, W, bias, y, n0, n1); break;
    case 5: gemv_range<D, 5, 2>(x, K, N, W, bias, y, n0, n1); break;
    case 6: gemv_range<D, 6, 2>(x, K, N, W, bias, y, n0, n1); break;
    case 7: gemv_range<D, 7, 2>(x, K, N, W, bias, y, n0, n1); break;
    default: gemv_range<D, 8, 2>(x, K, N, W, bias, y, n0, n1); break;
  }
}

// ---- panel GEMM (M > 8) ----
constexpr int kNP = 16;       // panel width (columns of y): four f32 vectors
constexpr int kMR = 4;        // micro-tile rows
constexpr int64_t kKC = 256;  // panel depth: 16 KB of packed f32, stays in L1
constexpr int64_t kMC = 256;  // rows of x per task

// Widens W[n0 .. n0+nw)[kc .. kc+kb) into wp[k][16] (f32), zero-padding columns >= nw. Four columns x four k
// are loaded as four vectors and transposed in registers.
template <DType D>
void pack_panel(const uint8_t* W, int64_t K, int64_t n0, int nw, int64_t kc, int64_t kb, float* wp) {
  const size_t rb = static_cast<size_t>(K) * esize<D>();
  const int64_t k4 = kb & ~int64_t(3);
  for (int c0 = 0; c0 < kNP; c0 += 4) {
    if (c0 + 4 <= nw) {
      const uint8_t* r0 = W + static_cast<size_t>(n0 + c0) * rb;
      const uint8_t* r1 = r0 + rb;
      const uint8_t* r2 = r1 + rb;
      const uint8_t* r3 = r2 + rb;
      for (int64_t k = 0; k < k4; k += 4) {
        const float32x4_t a = load4<D>(r0, kc + k), b = load4<D>(r1, kc + k);
        const float32x4_t c = load4<D>(r2, kc + k), d = load4<D>(r3, kc + k);
        const float64x2_t ab0 = vreinterpretq_f64_f32(vtrn1q_f32(a, b));  // a0 b0 a2 b2
        const float64x2_t ab1 = vreinterpretq_f64_f32(vtrn2q_f32(a, b));  // a1 b1 a3 b3
        const float64x2_t cd0 = vreinterpretq_f64_f32(vtrn1q_f32(c, d));  // c0 d0 c2 d2
        const float64x2_t cd1 = vreinterpretq_f64_f32(vtrn2q_f32(c, d));  // c1 d1 c3 d3
        float* o = wp + k * kNP + c0;
        vst1q_f32(o, vreinterpretq_f32_f64(vtrn1q_f64(ab0, cd0)));            // a0 b0 c0 d0
        vst1q_f32(o + kNP, vreinterpretq_f32_f64(vtrn1q_f64(ab1, cd1)));      // a1 b1 c1 d1
        vst1q_f32(o + 2 * kNP, vreinterpretq_f32_f64(vtrn2q_f64(ab0, cd0)));  // a2 b2 c2 d2
        vst1q_f32(o + 3 * kNP, vreinterpretq_f32_f64(vtrn2q_f64(ab1, cd1)));  // a3 b3 c3 d3
      }
      for (int64_t k = k4; k < kb; ++k)
        for (int j = 0; j < 4; ++j)
          wp[k * kNP + c0 + j] = load1<D>(W + static_cast<size_t>(n0 + c0 + j) * rb, kc + k);
    } else {
      for (int j = 0; j < 4; ++j) {
        const int col = c0 + j;
        if (col < nw) {
          const uint8_t* r = W + static_cast<size_t>(n0 + col) * rb;
          for (int64_t k = 0; k < kb; ++k) wp[k * kNP + col] = load1<D>(r, kc + k);
        } else {
          for (int64_t k = 0; k < kb; ++k) wp[k * kNP + col] = 0.f;
        }
      }
    }
  }
}

// acc[m][0..3] += x[m][k + L] * wp[k + L][0..15] for L = 0..3 (lane L of the x vector).
template <int MR, int L>
inline void fma_lane(float32x4_t (&acc)[MR][4], const float32x4_t (&xv)[MR], const float* wk) {
  const float32x4_t w0 = vld1q_f32(wk), w1 = vld1q_f32(wk + 4), w2 = vld1q_f32(wk + 8), w3 = vld1q_f32(wk + 12);
  for (int m = 0; m < MR; ++m) {
    acc[m][0] = vfmaq_laneq_f32(acc[m][0], w0, xv[m], L);
    acc[m][1] = vfmaq_laneq_f32(acc[m][1], w1, xv[m], L);
    acc[m][2] = vfmaq_laneq_f32(acc[m][2], w2, xv[m], L);
    acc[m][3] = vfmaq_laneq_f32(acc[m][3], w3, xv[m], L);
  }
}

// y[0..MR)[0..nw) (+)= x[0..MR)[0..kb) · wp; `first` starts from the bias (or zero) instead of y.
template <int MR>
void micro(const float* x, int64_t K, const float* wp, int64_t kb, float* y, int64_t N, int nw, bool first,
           const float* bias) {
  float32x4_t acc[MR][4];
  if (first) {
    alignas(16) float b[kNP] = {};
    if (bias) std::memcpy(b, bias, static_cast<size_t>(nw) * sizeof(float));
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = vld1q_f32(b + 4 * j);
  } else if (nw == kNP) {
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = vld1q_f32(y + m * N + 4 * j);
  } else {
    for (int m = 0; m < MR; ++m) {
      alignas(16) float t[kNP] = {};
      std::memcpy(t, y + m * N, static_cast<size_t>(nw) * sizeof(float));
      for (int j = 0; j < 4; ++j) acc[m][j] = vld1q_f32(t + 4 * j);
    }
  }
  const int64_t k4 = kb & ~int64_t(3);
  for (int64_t k = 0; k < k4; k += 4) {
    float32x4_t xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = vld1q_f32(x + m * K + k);
    const float* wk = wp + k * kNP;
    fma_lane<MR, 0>(acc, xv, wk);
    fma_lane<MR, 1>(acc, xv, wk + kNP);
    fma_lane<MR, 2>(acc, xv, wk + 2 * kNP);
    fma_lane<MR, 3>(acc, xv, wk + 3 * kNP);
  }
  for (int64_t k = k4; k < kb; ++k) {
    const float* wk = wp + k * kNP;
    const float32x4_t w0 = vld1q_f32(wk), w1 = vld1q_f32(wk + 4), w2 = vld1q_f32(wk + 8), w3 = vld1q_f32(wk + 12);
    for (int m = 0; m < MR; ++m) {
      const float xs = x[m * K + k];
      acc[m][0] = vfmaq_n_f32(acc[m][0], w0, xs);
      acc[m][1] = vfmaq_n_f32(acc[m][1], w1, xs);
      acc[m][2] = vfmaq_n_f32(acc[m][2], w2, xs);
      acc[m][3] = vfmaq_n_f32(acc[m][3], w3, xs);
    }
  }
  if (nw == kNP) {
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) vst1q_f32(y + m * N + 4 * j, acc[m][j]);
  } else {
    for (int m = 0; m < MR; ++m) {
      alignas(16) float t[kNP];
      for (int j = 0; j < 4; ++j) vst1q_f32(t + 4 * j, acc[m][j]);
      std::memcpy(y + m * N, t, static_cast<size_t>(nw) * sizeof(float));
    }
  }
}

template <DType D>
void gemm_block(const float* x, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t m0,
                int64_t m1, int64_t n0, int64_t n1) {
  thread_local std::vector<float> buf;
  buf.resize(static_cast<size_t>(kKC * kNP));
  float* wp = buf.data();
  for (int64_t kc = 0; kc < K; kc += kKC) {
    const int64_t kb = std::min(kKC, K - kc);
    const bool first = kc == 0;
    for (int64_t np = n0; np < n1; np += kNP) {
      const int nw = static_cast<int>(std::min<int64_t>(kNP, n1 - np));
      pack_panel<D>(W, K, np, nw, kc, kb, wp);
      const float* bp = bias ? bias + np : nullptr;
      int64_t m = m0;
      for (; m + kMR <= m1; m += kMR) micro<kMR>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, first, bp);
      switch (m1 - m) {
        case 1: micro<1>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, first, bp); break;
        case 2: micro<2>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, first, bp); break;
        case 3: micro<3>(x + m * K + kc, K, wp, kb, y + m * N + np, N, nw, first, bp); break;
        default: break;
      }
    }
  }
}

template <DType D>
void run(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const int threads = pool ? pool->size() : 1;
  if (M <= 8) {
    // Row ranges of ~64 KB of weights or more, a few per thread so a busy core doesn't stall the others.
    const int64_t row_bytes = K * static_cast<int64_t>(esize<D>());
    const auto [rows, tasks] = gemv_row_split(N, row_bytes, threads, 8);
    auto fn = [&](int64_t t) { gemv<D>(x, M, K, N, W, bias, y, t * rows, std::min(N, (t + 1) * rows)); };
    run_tasks(pool, tasks, fn);
    return;
  }
  // Tasks are (block of kMC rows of x) x (chunk of whole panels of N), about 4 per thread.
  const int64_t mblocks = (M + kMC - 1) / kMC;
  const auto [ncols, nchunks] = gemm_col_split(mblocks, N, threads, kNP);
  auto fn = [&](int64_t t) {
    const int64_t mb = t / nchunks, nc = t % nchunks;
    gemm_block<D>(x, K, N, W, bias, y, mb * kMC, std::min(M, (mb + 1) * kMC), nc * ncols,
                  std::min(N, (nc + 1) * ncols));
  };
  const int64_t tasks = mblocks * nchunks;
  run_tasks(pool, tasks, fn);
}

}  // namespace

bool matmul_neon_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool) {
  if (w.dtype != DType::kBF16 && w.dtype != DType::kF16 && w.dtype != DType::kF32) return false;
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return true;
  if (K <= 0) {  // empty dot products: y is the bias
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] = bias ? bias[n] : 0.f;
    return true;
  }
  switch (w.dtype) {
    case DType::kBF16: run<DType::kBF16>(x, M, w, bias, y, pool); return true;
    case DType::kF16: run<DType::kF16>(x, M, w, bias, y, pool); return true;
    default: run<DType::kF32>(x, M, w, bias, y, pool); return true;
  }
}

}  // namespace plm::cpu::kernels

#endif  // __aarch64__
