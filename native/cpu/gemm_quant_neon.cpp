// ARM64 NEON GEMV (M <= 8 rows of x) on weight-only quantized matrices, f32 activations and accumulation;
// the counterpart of gemm_quant_avx512.cpp, compiled only on aarch64 (NEON is baseline there).
// int8: 16 weights per step widened s8 -> s16 -> s32 -> f32, one scale per row applied at the end.
// q4: a group of 32 weights is 16 bytes; low and high nibbles minus 8 are widened the same way, the group's
// partial dot is multiplied by its scale into the row's accumulator. Four W rows are processed together so
// each x vector load serves four rows.
#if defined(__aarch64__)
#include <cstdint>
#include <arm_neon.h>

#include <algorithm>

#include "cpu/quant.h"

namespace plm::cpu::kernels {
namespace {

// 16 signed bytes as four f32 vectors.
inline void widen16(int8x16_t b, float32x4_t (&f)[4]) {
  const int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_high_s8(b);
  f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  f[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
  f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  f[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
}

template <int R>
void q8_rows(const int8_t* w, const float* scales, int64_t K, const float* x, int64_t M, int64_t N, int64_t n,
             const float* bias, float* y) {
  const int64_t kmain = K & ~int64_t(15);
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float32x4_t a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = vdupq_n_f32(0.f);
    for (int64_t k = 0; k < kmain; k += 16) {
      const float32x4_t x0 = vld1q_f32(xr + k), x1 = vld1q_f32(xr + k + 4);
      const float32x4_t x2 = vld1q_f32(xr + k + 8), x3 = vld1q_f32(xr + k + 12);
      for (int r = 0; r < R; ++r) {
        float32x4_t f[4];
        widen16(vld1q_s8(w + r * K + k), f);
        a0[r] = vfmaq_f32(a0[r], f[0], x0);
        a1[r] = vfmaq_f32(a1[r], f[1], x1);
        a0[r] = vfmaq_f32(a0[r], f[2], x2);
        a1[r] = vfmaq_f32(a1[r], f[3], x3);
      }
    }
    for (int r = 0; r < R; ++r) {
      float s = vaddvq_f32(vaddq_f32(a0[r], a1[r]));
      for (int64_t k = kmain; k < K; ++k) s += static_cast<float>(w[r * K + k]) * xr[k];
      y[m * N + n + r] = s * scales[r] + (bias ? bias[n + r] : 0.f);
    }
  }
}

template <int R>
void q4_rows(const uint8_t* w, const float* scales, int64_t K, const float* x, int64_t M, int64_t N, int64_t n,
             const float* bias, float* y) {
  const int64_t groups = K / kQ4Group;
  const uint8x16_t low = vdupq_n_u8(15), eight = vdupq_n_u8(8);
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float32x4_t acc[R];
    for (int r = 0; r < R; ++r) acc[r] = vdupq_n_f32(0.f);
    for (int64_t g = 0; g < groups; ++g) {
      float32x4_t xv[8];
      for (int i = 0; i < 8; ++i) xv[i] = vld1q_f32(xr + g * kQ4Group + 4 * i);
      for (int r = 0; r < R; ++r) {
        const uint8x16_t b = vld1q_u8(w + r * (K / 2) + g * 16);
        float32x4_t fl[4], fh[4];
        widen16(vreinterpretq_s8_u8(vsubq_u8(vandq_u8(b, low), eight)), fl);  // elements 0..15
        widen16(vreinterpretq_s8_u8(vsubq_u8(vshrq_n_u8(b, 4), eight)), fh);  // elements 16..31
        float32x4_t d = vmulq_f32(fl[0], xv[0]);
        d = vfmaq_f32(d, fl[1], xv[1]);
        d = vfmaq_f32(d, fl[2], xv[2]);
        d = vfmaq_f32(d, fl[3], xv[3]);
        d = vfmaq_f32(d, fh[0], xv[4]);
        d = vfmaq_f32(d, fh[1], xv[5]);
        d = vfmaq_f32(d, fh[2], xv[6]);
        d = vfmaq_f32(d, fh[3], xv[7]);
        acc[r] = vfmaq_n_f32(acc[r], d, scales[r * groups + g]);
      }
    }
    for (int r = 0; r < R; ++r) y[m * N + n + r] = vaddvq_f32(acc[r]) + (bias ? bias[n + r] : 0.f);
  }
}

}  // namespace

bool gemv_quant_neon(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  const bool q8 = w.quant == Quant::kQ8;
  if (!q8 && (w.quant != Quant::kQ4 || K % kQ4Group != 0)) return false;
  constexpr int64_t kRows = 64;  // W rows per task
  const int64_t tasks = (N + kRows - 1) / kRows;
  auto fn = [&](int64_t t) {
    const int64_t n0 = t * kRows, n1 = std::min(N, n0 + kRows);
    int64_t n = n0;
    if (q8) {
      const int8_t* W = static_cast<const int8_t*>(w.data);
      for (; n + 4 <= n1; n += 4) q8_rows<4>(W + n * K, w.scales + n, K, x, M, N, n, bias, y);
      for (; n < n1; ++n) q8_rows<1>(W + n * K, w.scales + n, K, x, M, N, n, bias, y);
    } else {
      const uint8_t* W = static_cast<const uint8_t*>(w.data);
      const int64_t groups = K / kQ4Group;
      for (; n + 4 <= n1; n += 4) q4_rows<4>(W + n * K / 2, w.scales + n * groups, K, x, M, N, n, bias, y);
      for (; n < n1; ++n) q4_rows<1>(W + n * K / 2, w.scales + n * groups, K, x, M, N, n, bias, y);
    }
  };
  run_tasks(pool, tasks, fn);
  return true;
}

}  // namespace plm::cpu::kernels

#endif  // __aarch64__
