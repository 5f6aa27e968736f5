// AVX-512F matmul with f32 activations: y[M, N] = x[M, K] · W[N, K]^T + bias, W in bf16/f16/f32 read in
// place from the mmap (bf16 widened by a 16-bit shift, f16 by vcvtph2ps), f32 FMA accumulation.
//  - M <= 8 (decode): GEMV. N is split into row ranges across the pool so every core streams its own share of
//    the weights once; each pass keeps 2-4 weight rows x M activation rows in registers. Memory-bound.
//  - M > 8 (prefill, vision in f32 mode): a panel GEMM. A 32-column panel of W (KC deep) is widened and
//    transposed once into a thread-local f32 buffer, then reused by every 6-row micro-tile of the M block.
#include <cstdint>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/align.h"
#include "cpu/gemm_kernels.h"

namespace plm::cpu::kernels {
namespace {

template <DType D>
inline __m512 load16(const void* row, int64_t k) {
  if constexpr (D == DType::kBF16) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else if constexpr (D == DType::kF16) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + k));
    return _mm512_cvtph_ps(v);
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(row) + k);
  }
}

template <DType D>
inline __m512 load16_mask(const void* row, int64_t k, __mmask16 m) {
  if constexpr (D == DType::kBF16) {
    __m256i v = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else if constexpr (D == DType::kF16) {
    __m256i v = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + k);
    return _mm512_cvtph_ps(v);
  } else {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + k);
  }
}

template <DType D>
constexpr size_t esize() {
  return D == DType::kF32 ? 4 : 2;
}

// Rows [n0, n1) of y for MR activation rows, NR weight rows per pass.
template <DType D, int MR, int NR>
void gemv_range(const float* x, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t n0,
                int64_t n1) {
  const size_t rb = static_cast<size_t>(K) * esize<D>();
  const int64_t kmain = K & ~int64_t(15);
  const __mmask16 tail = static_cast<__mmask16>((1u << (K - kmain)) - 1u);
  for (int64_t n = n0; n < n1; n += NR) {
    const int R = static_cast<int>(std::min<int64_t>(NR, n1 - n));
    const uint8_t* wr[NR];
    for (int r = 0; r < NR; ++r) wr[r] = W + static_cast<size_t>(n + std::min(r, R - 1)) * rb;
    __m512 acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MR; ++m) acc[r][m] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kmain; k += 16) {
      __m512 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < NR; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(wr[r]) + (k + 512) * esize<D>(), _MM_HINT_T0);
        const __m512 w = load16<D>(wr[r], k);
        for (int m = 0; m < MR; ++m) acc[r][m] = _mm512_fmadd_ps(w, xv[m], acc[r][m]);
      }
    }
    if (tail) {
      __m512 xv[MR];
      for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_ps(tail, x + m * K + kmain);
      for (int r = 0; r < NR; ++r) {
        const __m512 w = load16_mask<D>(wr[r], kmain, tail);
        for (int m = 0; m < MR; ++m) acc[r][m] = _mm512_fmadd_ps(w, xv[m], acc[r][m]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MR; ++m) y[m * N + n + r] = _mm512_reduce_add_ps(acc[r][m]) + (bias ? bias[n + r] : 0.f);
  }
}

// bf16 weights with K % 32 == 0, any number of rows of x: the "even/odd" order. A 64-byte load holds 32 bf16;
// the even elements become f32 with one 32-bit shift and the odd ones with one AND (a bf16 is the top half of
// an f32), against x split into its even and odd elements once per call. Two vector ALU ops + two FMAs per 32
// weights instead of widen + shift + FMA per 16, which keeps 2 cores at the memory bandwidth in decode. Each
// output (row m, weight row n) is computed by the same operations whatever M is and wherever row m sits: ae and
// ao accumulate k = 32b + 2j and 32b + 2j + 1 in lane j, b ascending, then y = reduce_add(ae + ao) + bias. So a
// row's result never depends on the other rows of the call: the GEMV (M <= 8) and the blocked GEMM (M > 8) give
// the same bits for it (batched decode and chunked prefill are invariant to how rows are grouped).
//
// The split x is k-block major, xeo [K/32][M][2][16] (block b, row m: 16 even then 16 odd elements), so that
// one k step of all M rows is M * 128 contiguous bytes. (Row-major halves put the 2M streams of a k step 4 KiB
// apart for K = 2048: one L1 set, which 16 streams overflow; the 8-row GEMV ran at a tenth of its speed.)
constexpr int64_t kEoBlock = 32;  // floats of one row in one k block: 16 even + 16 odd

// MR rows of x (xeo at the first of them, `xstep` floats between k blocks) x NR weight rows [n, n + NR)
// (clamped to n1: repeated rows are computed and not stored).
template <int MR, int NR, bool Prefetch>
inline void eo_block(const float* xeo, int64_t xstep, int64_t K, int64_t N, const uint8_t* W, const float* bias,
                     float* y, int64_t n, int64_t n1) {
  const size_t rb = static_cast<size_t>(K) * 2;
  const int R = static_cast<int>(std::min<int64_t>(NR, n1 - n));
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const uint8_t* wr[NR];
  for (int r = 0; r < NR; ++r) wr[r] = W + static_cast<size_t>(n + std::min(r, R - 1)) * rb;
  __m512 ae[MR][NR], ao[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < NR; ++r) ae[m][r] = ao[m][r] = _mm512_setzero_ps();
  const float* xb = xeo;
  for (int64_t k = 0; k < K; k += 32, xb += xstep) {
    __m512 we[NR], wo[NR];
    for (int r = 0; r < NR; ++r) {
      if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(wr[r]) + (k + 512) * 2, _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(wr[r] + k * 2);
      we[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      wo[r] = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 e = _mm512_loadu_ps(xb + m * kEoBlock), o = _mm512_loadu_ps(xb + m * kEoBlock + 16);
      for (int r = 0; r < NR; ++r) {
        ae[m][r] = _mm512_fmadd_ps(we[r], e, ae[m][r]);
        ao[m][r] = _mm512_fmadd_ps(wo[r], o, ao[m][r]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < R; ++r)
      y[m * N + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(ae[m][r], ao[m][r])) + (bias ? bias[n + r] : 0.f);
}

// Weight rows [n0, n1) for MR rows of x; NR weight rows in flight so that 2 * MR * NR accumulators fill the
// registers (eight streams per core at MR = 1: four measured ~3% slower, same results). Five to eight rows run
// as 4 + (MR - 4) over the same 2 weight rows (the second pass reads them from L1): one block of 8 rows spills.
template <int MR>
void gemv_bf16_eo(const float* xeo, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y, int64_t n0,
                  int64_t n1) {
  if constexpr (MR <= 4) {
    constexpr int NR = MR == 1 ? 8 : MR == 2 ? 4 : 2;
    for (int64_t n = n0; n < n1; n += NR) eo_block<MR, NR, true>(xeo, MR * kEoBlock, K, N, W, bias, y, n, n1);
  } else {
    for (int64_t n = n0; n < n1; n += 2) {
      eo_block<4, 2, true>(xeo, MR * kEoBlock, K, N, W, bias, y, n, n1);
      eo_block<MR - 4, 2, false>(xeo + 4 * kEoBlock, MR * kEoBlock, K, N, W, bias, y + 4 * N, n, n1);
    }
  }
}

void gemv_bf16_eo_rows(int64_t M, const float* xeo, int64_t K, int64_t N, const uint8_t* W, const float* bias,
                       float* y, int64_t n0, int64_t n1) {
  switch (M) {
    case 1: gemv_bf16_eo<1>(xeo, K, N, W, bias, y, n0, n1); break;
    case 2: gemv_bf16_eo<2>(xeo, K, N, W, bias, y, n0, n1); break;
    case 3: gemv_bf16_eo<3>(xeo, K, N, W, bias, y, n0, n1); break;
    case 4: gemv_bf16_eo<4>(xeo, K, N, W, bias, y, n0, n1); break;
    case 5: gemv_bf16_eo<5>(xeo, K, N, W, bias, y, n0, n1); break;
    case 6: gemv_bf16_eo<6>(xeo, K, N, W, bias, y, n0, n1); break;
    case 7: gemv_bf16_eo<7>(xeo, K, N, W, bias, y, n0, n1); break;
    default: gemv_bf16_eo<8>(xeo, K, N, W, bias, y, n0, n1); break;
  }
}

// x [M, K] -> xeo [K/32][M][2][16]: per k block and row, its 16 even then 16 odd elements.
void split_even_odd(const float* x, int64_t M, int64_t K, float* xeo, ThreadPool* pool) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  parallel_for(M > 64 ? pool : nullptr, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t m = r0; m < r1; ++m)
      for (int64_t k = 0; k < K; k += 32) {
        const __m512 a = _mm512_loadu_ps(x + m * K + k), b = _mm512_loadu_ps(x + m * K + k + 16);
        float* dst = xeo + (k / 32) * M * kEoBlock + m * kEoBlock;
        _mm512_storeu_ps(dst, _mm512_permutex2var_ps(a, even, b));
        _mm512_storeu_ps(dst + 16, _mm512_permutex2var_ps(a, odd, b));
      }
  });
}

// The blocked GEMM of the even/odd order (M > 8): 4 rows of x x 3 weight rows per block (24 accumulators).
// A task owns a range of weight rows (kept in L2 while every 4-row group of x streams past it).
constexpr int kEoMR = 4, kEoNR = 3;
void gemm_bf16_eo(const float* xeo, int64_t M, int64_t K, int64_t N, const uint8_t* W, const float* bias, float* y,
                  int64_t n0, int64_t n1) {
  const int64_t xstep = M * kEoBlock;
  int64_t m = 0;
  for (; m + kEoMR <= M; m += kEoMR)
    for (int64_t n = n0; n < n1; n += kEoNR)
      eo_block<kEoMR, kEoNR, false>(xeo + m * kEoBlock, xstep, K, N, W, bias, y + m * N, n, n1);
  for (; m < M; ++m)
    for (int64_t n = n0; n < n1; n += kEoNR)
      eo_block<1, kEoNR, false>(xeo + m * kEoBlock, xstep, K, N, W, bias, y + m * N, n, n1);
}

void run_bf16_eo(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  const int threads = pool ? pool->size() : 1;
  thread_local std::vector<float> xeo_buf;
  xeo_buf.resize(static_cast<size_t>(M * K));
  float* xeo = xeo_buf.data();  // [K/32][M][2][16]: the caller's buffer, read by the workers
  split_even_odd(x, M, K, xeo, pool);
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  if (M <= 8) {
    // Row ranges of ~64 KB of weights or more, a few per thread so a busy core doesn't stall the other.
    const auto [rows, tasks] = gemv_row_split(N, K * 2, threads, 4);
    run_tasks(pool, tasks, [&](int64_t t) {
      gemv_bf16_eo_rows(M, xeo, K, N, W, bias, y, t * rows, std::min(N, (t + 1) * rows));
    });
    return;
  }
  // About 4 tasks per thread, each a multiple of 3 weight rows and at most ~256 KiB of them.
  int64_t rows = std::max<int64_t>(kEoNR, (N + 4 * threads - 1) / (4 * threads));
  rows = std::min<int64_t>(rows, std::max<int64_t>(kEoNR, (256 << 10) / (K * 2)));
  rows = (rows + kEoNR - 1) / kEoNR * kEoNR;
  const int64_t tasks = (N + rows - 1) / rows;
  run_tasks(pool, tasks, [&](int64_t t) {
    gemm_bf16_eo(xeo, M, K, N, W, bias, y, t * rows, std::min(N, (t + 1) * rows));
  });
}

template <DType D>
void gemv(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.cols, N = w.rows;
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  switch (M) {
    case 1: gemv_range<D, 1, 4>(x, K, N, W, bias, y, n0, n1); break;
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
constexpr int kNP = 32;     // panel width (columns of y)
constexpr int kMR = 6;      // micro-tile rows
constexpr int64_t kKC = 256;
constexpr int64_t kMC = 240;

// Widens W[n0 .. n0+nw)[kc .. kc+kb) into wp[k][32] (f32), zero-padding columns >= nw.
template <DType D>
void pack_panel(const WeightMatrix& w, int64_t n0, int nw, int64_t kc, int64_t kb, float* wp) {
  const size_t rb = static_cast<size_t>(w.cols) * esize<D>();
  const uint8_t* W = static_cast<const uint8_t*>(w.data);
  alignas(64) float tmp[16 * 16];
  for (int64_t k0 = 0; k0 < kb; k0 += 16) {
    const int kn = static_cast<int>(std::min<int64_t>(16, kb - k0));
    const __mmask16 km = static_cast<__mmask16>((1u << kn) - 1u);
    for (int half = 0; half < 2; ++half) {
      for (int j = 0; j < 16; ++j) {
        const int col = half * 16 + j;
        __m512 v = col < nw ? load16_mask<D>(W + static_cast<size_t>(n0 + col) * rb, kc + k0, km) : _mm512_setzero_ps();
        _mm512_store_ps(tmp + j * 16, v);
      }
      // tmp[j][k] -> wp[k0 + k][half*16 + j]
      const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32(16));
      for (int k = 0; k < kn; ++k)
        _mm512_store_ps(wp + (k0 + k) * kNP + half * 16, _mm512_i32gather_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(k)), tmp, 4));
    }
  }
}

template <int MR>
void micro(const float* x, int64_t K, const float* wp, int64_t kb, float* y, int64_t N, int nw, bool first,
           const float* bias) {
  const __mmask16 m0 = static_cast<__mmask16>(nw >= 16 ? 0xffff : (1u << nw) - 1u);
  const __mmask16 m1 = static_cast<__mmask16>(nw >= 32 ? 0xffff : nw > 16 ? (1u << (nw - 16)) - 1u : 0u);
  __m512 c0[MR], c1[MR];
  if (first) {
    const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) c0[m] = b0, c1[m] = b1;
  } else {
    for (int m = 0; m < MR; ++m) {
      c0[m] = _mm512_maskz_loadu_ps(m0, y + m * N);
      c1[m] = _mm512_maskz_loadu_ps(m1, y + m * N + 16);
    }
  }
  for (int64_t k = 0; k < kb; ++k) {
    const __m512 w0 = _mm512_load_ps(wp + k * kNP), w1 = _mm512_load_ps(wp + k * kNP + 16);
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = _mm512_set1_ps(x[m * K + k]);
      c0[m] = _mm512_fmadd_ps(w0, xb, c0[m]);
      c1[m] = _mm512_fmadd_ps(w1, xb, c1[m]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    _mm512_mask_storeu_ps(y + m * N, m0, c0[m]);
    _mm512_mask_storeu_ps(y + m * N + 16, m1, c1[m]);
  }
}

template <DType D>
void gemm_block(const float* x, const WeightMatrix& w, const float* bias, float* y, int64_t m0, int64_t m1,
                int64_t n0, int64_t n1) {
  const int64_t K = w.cols, N = w.rows;
  thread_local std::vector<float, std::allocator<float>> buf;
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
  const int64_t N = w.rows, K = w.cols;
  const int threads = pool ? pool->size() : 1;
  if constexpr (D == DType::kBF16) {
    if (K % 32 == 0 && M <= 8) return run_bf16_eo(x, M, w, bias, y, pool);
  }
  if (M <= 8) {
    // Row ranges of ~64 KB of weights or more, a few per thread so a busy core doesn't stall the other.
    const int64_t row_bytes = K * static_cast<int64_t>(esize<D>());
    const auto [rows, tasks] = gemv_row_split(N, row_bytes, threads, 4);
    auto fn = [&](int64_t t) { gemv<D>(x, M, w, bias, y, t * rows, std::min(N, (t + 1) * rows)); };
    run_tasks(pool, tasks, fn);
    return;
  }
  const int64_t mblocks = (M + kMC - 1) / kMC;
  const auto [ncols, nchunks] = gemm_col_split(mblocks, N, threads, kNP);
  auto fn = [&](int64_t t) {
    const int64_t mb = t / nchunks, nc = t % nchunks;
    gemm_block<D>(x, w, bias, y, mb * kMC, std::min(M, (mb + 1) * kMC), nc * ncols, std::min(N, (nc + 1) * ncols));
  };
  const int64_t tasks = mblocks * nchunks;
  run_tasks(pool, tasks, fn);
}

}  // namespace

bool matmul_avx512_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                       ThreadPool* pool, bool row_invariant) {
  if (M <= 0 || w.rows <= 0) return true;
  if (row_invariant) {
    if (w.dtype != DType::kBF16 || w.cols % 32 != 0) return false;
    run_bf16_eo(x, M, w, bias, y, pool);
    return true;
  }
  switch (w.dtype) {
    case DType::kBF16: run<DType::kBF16>(x, M, w, bias, y, pool); return true;
    case DType::kF16: run<DType::kF16>(x, M, w, bias, y, pool); return true;
    case DType::kF32: run<DType::kF32>(x, M, w, bias, y, pool); return true;
    default: return false;
  }
}

}  // namespace plm::cpu::kernels
