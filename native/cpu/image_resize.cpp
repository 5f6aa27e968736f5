// Antialiased bicubic uint8 resize, reproducing PyTorch's CPU uint8 path bit for bit.
//
// What PyTorch does (read in aten/src/ATen/native/cpu/UpSampleKernel.cpp, pytorch/pytorch main;
// torchvision/transforms/v2/functional/_geometry.py `resize_image` in torchvision 0.28):
//   * torchvision keeps uint8 tensors as uint8 on CPU for BICUBIC (`_do_native_uint8_resize_on_cpu`)
//     and calls `interpolate(..., mode="bicubic", antialias=True, align_corners=False)`; no float
//     round trip, no extra round/clamp (that fallback exists only for GPU / float).
//   * `separable_upsample_generic_Nd_kernel_impl` (and the AVX2 path, which uses the same int16
//     weights) resamples the width first into a temporary uint8 tensor, then the height. An axis
//     whose size does not change is skipped; equal shapes are a copy.
//   * weights per axis: `HelperInterpBase::_compute_indices_min_size_weights_aa` in double,
//     `HelperInterpCubic::aa_filter` with a = -0.5, then `_compute_index_ranges_int16_weights`
//     quantizes them to int16 with one precision per axis.
//   * accumulation: int32, starting at 1 << (precision - 1), result >> precision clamped to 0..255
//     (`basic_loop_aa_horizontal<uint8_t>` / `basic_loop_aa_vertical<uint8_t>`).
// This file is an independent implementation of those semantics.
#include "cpu/image_resize.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace plm {
namespace {

// Keys cubic convolution kernel with a = -0.5 (PIL's bicubic), evaluated in the same operation
// order as PyTorch so that the double results are identical.
inline double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

// Resampling plan of one axis: output i reads `count[i]` input samples starting at `first[i]`,
// weighted by w16[i * taps + j] (fixed point with `precision` fractional bits).
struct AxisPlan {
  int taps = 0;
  int precision = 0;
  std::vector<int32_t> first;   // [out]
  std::vector<int32_t> count;   // [out]
  std::vector<int16_t> w16;     // [out, taps]
};

AxisPlan make_axis_plan(int in_size, int out_size) {
  AxisPlan plan;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  // Filter support in input pixels: widened by the scale when downsampling (antialias).
  const double support = (scale >= 1.0) ? 2.0 * scale : 2.0;
  const int taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  const double invscale = (scale >= 1.0) ? 1.0 / scale : 1.0;
  plan.taps = taps;
  plan.first.resize(out_size);
  plan.count.resize(out_size);
  std::vector<double> wf(static_cast<size_t>(out_size) * taps, 0.0);

  double wt_max = 0.0;
  for (int i = 0; i < out_size; ++i) {
    const double center = scale * (i + 0.5);
    // Truncating casts (toward zero) as in the reference, then clipping to the image.
    int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    int64_t xsize = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_size) - xmin;
    xsize = std::clamp<int64_t>(xsize, 0, taps);
    double* w = &wf[static_cast<size_t>(i) * taps];
    double total = 0.0;
    for (int64_t j = 0; j < xsize; ++j) {
      const double v = keys_cubic((static_cast<double>(j + xmin) - center + 0.5) * invscale);
      w[j] = v;
      total += v;
    }
    if (total != 0.0) {
      for (int64_t j = 0; j < xsize; ++j) {
        w[j] /= total;
        wt_max = std::max(wt_max, w[j]);
      }
    }
    plan.first[i] = static_cast<int32_t>(xmin);
    plan.count[i] = static_cast<int32_t>(xsize);
  }

  // Largest precision (< 22 bits) such that the biggest weight still fits in int16.
  int precision = 0;
  for (precision = 0; precision < 22; ++precision) {
    const int next_value = static_cast<int>(0.5 + wt_max * (1 << (precision + 1)));
    if (next_value >= (1 << 15)) break;
  }
  plan.precision = precision;
  plan.w16.resize(wf.size());
  for (size_t k = 0; k < wf.size(); ++k) {
    const double v = wf[k] * (1 << precision);
    plan.w16[k] = static_cast<int16_t>((v < 0) ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return plan;
}

inline uint8_t clamp_u8(int32_t v) { return static_cast<uint8_t>(std::clamp(v, 0, 255)); }

// Horizontal pass over one row: src row [in_w, C] -> dst row [out_w, C].
template <int C>
void resample_row_h(const uint8_t* src, uint8_t* dst, int out_w, const AxisPlan& p) {
  const int32_t half = 1 << (p.precision - 1);
  for (int ox = 0; ox < out_w; ++ox) {
    const uint8_t* s = src + static_cast<size_t>(p.first[ox]) * C;
    const int16_t* w = &p.w16[static_cast<size_t>(ox) * p.taps];
    const int n = p.count[ox];
    int32_t acc[C];
    for (int c = 0; c < C; ++c) acc[c] = half;
    for (int j = 0; j < n; ++j) {
      const int32_t wj = w[j];
      for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(s[j * C + c]) * wj;
    }
    for (int c = 0; c < C; ++c) dst[static_cast<size_t>(ox) * C + c] = clamp_u8(acc[c] >> p.precision);
  }
}

void resample_row_h_any(const uint8_t* src, uint8_t* dst, int out_w, int channels, const AxisPlan& p) {
  switch (channels) {
    case 1: resample_row_h<1>(src, dst, out_w, p); break;
    case 2: resample_row_h<2>(src, dst, out_w, p); break;
    case 3: resample_row_h<3>(src, dst, out_w, p); break;
    default: resample_row_h<4>(src, dst, out_w, p); break;
  }
}

// Vertical pass for output row `oy`: rows(r) returns input row r ([row_len] uint8).
template <typename RowFn>
void resample_row_v(RowFn rows, uint8_t* dst, size_t row_len, int oy, const AxisPlan& p,
                    std::vector<int32_t>& acc) {
  const int32_t half = 1 << (p.precision - 1);
  acc.assign(row_len, half);
  const int16_t* w = &p.w16[static_cast<size_t>(oy) * p.taps];
  const int first = p.first[oy];
  for (int j = 0; j < p.count[oy]; ++j) {
    const int32_t wj = w[j];
    const uint8_t* r = rows(first + j);
    int32_t* a = acc.data();
    for (size_t x = 0; x < row_len; ++x) a[x] += static_cast<int32_t>(r[x]) * wj;
  }
  for (size_t x = 0; x < row_len; ++x) dst[x] = clamp_u8(acc[x] >> p.precision);
}

}  // namespace

void resize_bicubic_antialias_u8(const uint8_t* src, int src_w, int src_h, int channels, uint8_t* dst,
                                 int dst_w, int dst_h, ThreadPool* pool) {
  if (src == nullptr || dst == nullptr || src_w <= 0 || src_h <= 0 || dst_w <= 0 || dst_h <= 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "resize_bicubic_antialias_u8: sizes must be positive (got " + std::to_string(src_w) + "x" +
                    std::to_string(src_h) + " -> " + std::to_string(dst_w) + "x" + std::to_string(dst_h) + ")");
  }
  if (channels < 1 || channels > 4) {
    throw Error(ErrorCode::kInvalidArgument,
                "resize_bicubic_antialias_u8: channels must be 1..4, got " + std::to_string(channels));
  }
  const size_t C = static_cast<size_t>(channels);
  const size_t src_row = static_cast<size_t>(src_w) * C;
  const size_t dst_row = static_cast<size_t>(dst_w) * C;
  const bool need_h = src_w != dst_w;
  const bool need_v = src_h != dst_h;

  if (!need_h && !need_v) {
    std::memcpy(dst, src, src_row * static_cast<size_t>(src_h));
    return;
  }

  AxisPlan ph, pv;
  if (need_h) ph = make_axis_plan(src_w, dst_w);
  if (need_v) pv = make_axis_plan(src_h, dst_h);

  if (!need_v) {
    // Width only: rows are independent.
    constexpr int kRows = 16;
    const int64_t tasks = (dst_h + kRows - 1) / kRows;
    run_tasks(pool, tasks, [&](int64_t t) {
      const int y1 = std::min<int>(dst_h, static_cast<int>((t + 1) * kRows));
      for (int y = static_cast<int>(t * kRows); y < y1; ++y)
        resample_row_h_any(src + y * src_row, dst + y * dst_row, dst_w, channels, ph);
    });
    return;
  }

  // Height changes. Output rows are processed in blocks; each block first resamples (width pass)
  // just the input rows it needs into a block-local uint8 buffer — the same intermediate uint8
  // values PyTorch stores in its temporary tensor — so memory stays bounded for huge inputs.
  constexpr int kRows = 32;
  const int64_t tasks = (dst_h + kRows - 1) / kRows;
  run_tasks(pool, tasks, [&](int64_t t) {
    const int oy0 = static_cast<int>(t * kRows);
    const int oy1 = std::min<int>(dst_h, oy0 + kRows);
    std::vector<int32_t> acc;
    if (!need_h) {
      auto rows = [&](int r) { return src + static_cast<size_t>(r) * src_row; };
      for (int oy = oy0; oy < oy1; ++oy) resample_row_v(rows, dst + oy * dst_row, dst_row, oy, pv, acc);
      return;
    }
    int lo = pv.first[oy0], hi = lo;
    for (int oy = oy0; oy < oy1; ++oy) {
      lo = std::min(lo, pv.first[oy]);
      hi = std::max(hi, pv.first[oy] + pv.count[oy]);
    }
    std::vector<uint8_t> mid(static_cast<size_t>(std::max(hi - lo, 0)) * dst_row);  // [hi-lo, dst_w, C]
    for (int r = lo; r < hi; ++r)
      resample_row_h_any(src + static_cast<size_t>(r) * src_row, mid.data() + static_cast<size_t>(r - lo) * dst_row,
                         dst_w, channels, ph);
    auto rows = [&](int r) { return mid.data() + static_cast<size_t>(r - lo) * dst_row; };
    for (int oy = oy0; oy < oy1; ++oy) resample_row_v(rows, dst + oy * dst_row, dst_row, oy, pv, acc);
  });
}

}  // namespace plm
