// RMSNorm and LayerNorm on AVX-512, bit-identical to norms.cpp's portable loops: the same double sums (lane j of
// one __m512d is sum8's accumulator j, the same order of adds, the same final pairing) and the same float
// rounding steps. Two rows at a time: each lane's double adds form one serial chain (4 cycles per 8 elements),
// so a second row's chain fills the wait. The _round forms keep GCC from contracting a product and a sum into an
// FMA, which would change the bits.
#include <cstdint>
#include <immintrin.h>

#include <cmath>

namespace plm::cpu::kernels {
namespace {

constexpr int kDir = _MM_FROUND_CUR_DIRECTION;

// Sums over R rows of term(row, 8 floats as doubles) in lanes, the tail (dim % 8) of each row added to lane 0
// after the vector part, in order, as sum8 does.
template <int R, class Term, class TailTerm>
void sums(const float* const* x, int64_t dim, const Term& term, const TailTerm& tail_term, double* out) {
  __m512d acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_pd();
  const int64_t body = dim / 8 * 8;
  for (int64_t i = 0; i < body; i += 8)
    for (int r = 0; r < R; ++r) acc[r] = _mm512_add_round_pd(acc[r], term(r, _mm512_cvtps_pd(_mm256_loadu_ps(x[r] + i))), kDir);
  for (int r = 0; r < R; ++r) {
    alignas(64) double a[8];
    _mm512_store_pd(a, acc[r]);
    for (int64_t i = body; i < dim; ++i) {
      volatile double t = tail_term(r, static_cast<double>(x[r][i]));  // rounded before the add: no FMA
      a[0] += t;
    }
    out[r] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
}

// y = ((x - mu) * inv) * w + b (LayerNorm, with b) or w * (x * inv) (RMSNorm, b null, mu unused), per float.
void normalize(const float* x, const float* w, const float* b, float* y, int64_t dim, float mu, float inv) {
  const __m512 vmu = _mm512_set1_ps(mu), vinv = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < dim; i += 16) {
    const __mmask16 m = dim - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (dim - i)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i), wv = _mm512_maskz_loadu_ps(m, w + i);
    __m512 v;
    if (b) {
      v = _mm512_mul_round_ps(_mm512_mul_round_ps(_mm512_sub_round_ps(xv, vmu, kDir), vinv, kDir), wv, kDir);
      v = _mm512_add_round_ps(v, _mm512_maskz_loadu_ps(m, b + i), kDir);
    } else {
      v = _mm512_mul_round_ps(wv, _mm512_mul_round_ps(xv, vinv, kDir), kDir);
    }
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

template <int R>
void layer_norm_rows(const float* x, const float* w, const float* b, float* y, int64_t dim, float eps) {
  const float* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = x + r * dim;
  double mean[R], var[R];
  sums<R>(rows, dim, [](int, __m512d v) { return v; }, [](int, double v) { return v; }, mean);
  for (int r = 0; r < R; ++r) mean[r] /= static_cast<double>(dim);
  __m512d vmean[R];
  for (int r = 0; r < R; ++r) vmean[r] = _mm512_set1_pd(mean[r]);
  sums<R>(
      rows, dim,
      [&](int r, __m512d v) {
        const __m512d d = _mm512_sub_round_pd(v, vmean[r], kDir);
        return _mm512_mul_round_pd(d, d, kDir);
      },
      [&](int r, double v) {
        const double d = v - mean[r];
        return d * d;
      },
      var);
  for (int r = 0; r < R; ++r) {
    var[r] /= static_cast<double>(dim);
    const float inv = 1.0f / std::sqrt(static_cast<float>(var[r]) + eps);
    normalize(rows[r], w, b, y + r * dim, dim, static_cast<float>(mean[r]), inv);
  }
}

template <int R>
void rms_norm_rows(const float* x, const float* w, float* y, int64_t dim, float eps) {
  const float* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = x + r * dim;
  double ss[R];
  sums<R>(rows, dim, [](int, __m512d v) { return _mm512_mul_round_pd(v, v, kDir); }, [](int, double v) { return v * v; },
          ss);
  for (int r = 0; r < R; ++r) {
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss[r] / static_cast<double>(dim)) + eps);
    normalize(rows[r], w, nullptr, y + r * dim, dim, 0.f, inv);
  }
}

}  // namespace

// Rows may alias y only row for row (each row is read whole before it is written).
void layer_norm_avx512(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) layer_norm_rows<2>(x + r * dim, w, b, y + r * dim, dim, eps);
  if (r < rows) layer_norm_rows<1>(x + r * dim, w, b, y + r * dim, dim, eps);
}

void rms_norm_avx512(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) rms_norm_rows<2>(x + r * dim, w, y + r * dim, dim, eps);
  if (r < rows) rms_norm_rows<1>(x + r * dim, w, y + r * dim, dim, eps);
}

}  // namespace plm::cpu::kernels
