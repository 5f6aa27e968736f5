// AVX2+FMA+F16C GEMV for decode (M <= 8) on CPUs without AVX-512: same structure as gemm_avx512.cpp,
// 8 lanes. Larger M returns false (gemm_panel_avx2.cpp takes it).
#include <cstdint>
#include <immintrin.h>

#include <algorithm>

#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

template <DType D>
inline __m256 load8(const void* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  } else if constexpr (D == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k)));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(row) + k);
  }
}

template <DType D>
inline float load1(const void* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    uint32_t u = uint32_t(static_cast<const uint16_t*>(row)[k]) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  } else if constexpr (D == DType::kF16) {
    return _cvtsh_ss(static_cast<const uint16_t*>(row)[k]);
  } else {
    return static_cast<const float*>(row)[k];
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <DType D, int MR, int NR>
void gemv_range(const float* x, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t n0,
                int64_t n1) {
  constexpr size_t es = D == DType::kF32 ? 4 : 2;
  const size_t rb = static_cast<size_t>(K) * es;
  const int64_t kmain = K & ~int64_t(7);
  for (int64_t n = n0; n < n1; n += NR) {
    const int R = static_cast<int>(std::min<int64_t>(NR, n1 - n));
    const uint8_t* wr[NR];
    for (int r = 0; r < NR; ++r) wr[r] = W + static_cast<size_t>(n + std::min(r, R - 1)) * rb;
    __m256 acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kmain; k += 8) {
      __m256 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(x + m * K + k);
      for (int r = 0; r < NR; ++r) {
        const __m256 w = load8<D>(wr[r], k);
        for (int m = 0; m < MR; ++m) acc[r][m] = _mm256_fmadd_ps(w, xv[m], acc[r][m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MR; ++m) {
        float s = hsum(acc[r][m]);
        for (int64_t k = kmain; k < K; ++k) s += load1<D>(wr[r], k) * x[m * K + k];
        y[m * N + n + r] = s + (bias ? bias[n + r] : 0.f);
      }
  }
}

template <DType D>
void run(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  const int threads = pool ? pool->size() : 1;
  const int64_t row_bytes = K * (D == DType::kF32 ? 4 : 2);
  const auto [rows, tasks] = gemv_row_split(N, row_bytes, threads, 4);
  auto fn = [&](int64_t t) {
    const int64_t a = t * rows, b = std::min(N, (t + 1) * rows);
    switch (M) {
      case 1: gemv_range<D, 1, 4>(x, K, N, W, bias, y, a, b); break;
      case 2: gemv_range<D, 2, 4>(x, K, N, W, bias, y, a, b); break;
      case 3: gemv_range<D, 3, 2>(x, K, N, W, bias, y, a, b); break;
      case 4: gemv_range<D, 4, 2>(x, K, N, W, bias, y, a, b); break;
      default:
        for (int64_t m = 0; m < M; m += 4) {
          const int64_t mr = std::min<int64_t>(4, M - m);
          for (int64_t mm = 0; mm < mr; ++mm) gemv_range<D, 1, 4>(x + (m + mm) * K, K, N, W, bias, y + (m + mm) * N, a, b);
        }
        break;
    }
  };
  run_tasks(pool, tasks, fn);
}

}  // namespace

bool matmul_avx2_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool) {
  if (M > 8) return false;
  if (M <= 0 || w.rows <= 0) return true;
  switch (w.dtype) {
    case DType::kBF16: run<DType::kBF16>(x, M, w, bias, y, pool); return true;
    case DType::kF16: run<DType::kF16>(x, M, w, bias, y, pool); return true;
    case DType::kF32: run<DType::kF32>(x, M, w, bias, y, pool); return true;
    default: return false;
  }
}

}  // namespace plm::cpu::kernels
