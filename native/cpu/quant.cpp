#include "cpu/quant.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "cpu/cpu_features.h"

namespace plm::cpu {
namespace kernels {
bool gemv_quant_avx512(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);
bool gemv_vnni(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool);
#if defined(__aarch64__)
bool gemv_quant_neon(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);
#endif
}  // namespace kernels

namespace {

#if defined(__x86_64__) || defined(_M_X64)
bool avx512_usable() {
  static const bool avx512 = cpu_features().avx512f && cpu_features().avx512bw && cpu_features().avx512dq;
  return avx512;
}

// int8 and q4 decode with VNNI quantize x to int8 per block of 32 (like llama.cpp's Q8_0 / Q4_0 x Q8_0);
// PLM_Q8_EXACT_X=1 / PLM_Q4_EXACT_X=1 keep f32 activations (slower: widening the weights to f32 is
// compute-bound on 2 cores).
bool vnni_decode(Quant q) {
  static const bool vnni = avx512_usable() && cpu_features().avx512_vnni && cpu_features().avx512vl;
  auto env_on = [](const char* name) {
    const char* e = std::getenv(name);
    return e && *e == '1';
  };
  static const bool q8_exact_x = env_on("PLM_Q8_EXACT_X"), q4_exact_x = env_on("PLM_Q4_EXACT_X");
  return vnni && ((q == Quant::kQ8 && !q8_exact_x) || (q == Quant::kQ4 && !q4_exact_x));
}
#endif

}  // namespace

Quant parse_quant(const std::string& name) {
  if (name.empty() || name == "none") return Quant::kNone;
  if (name == "int8" || name == "q8") return Quant::kQ8;
  if (name == "q4" || name == "int4") return Quant::kQ4;
  throw Error(ErrorCode::kInvalidArgument, "quantize must be \"none\", \"int8\" or \"q4\", got \"" + name + "\"");
}

const char* quant_name(Quant q) {
  switch (q) {
    case Quant::kQ8: return "int8";
    case Quant::kQ4: return "q4";
    default: return "none";
  }
}

QuantizedMatrix quantize_matrix(const WeightMatrix& w, Quant q, ThreadPool* pool) {
  if (w.quant != Quant::kNone) throw Error(ErrorCode::kInvalidArgument, "matrix is already quantized");
  QuantizedMatrix out;
  out.rows = w.rows;
  out.cols = w.cols;
  out.quant = q;
  const int64_t K = w.cols;
  if (q == Quant::kQ8) {
    out.data.resize(static_cast<size_t>(w.rows * K));
    out.scales.resize(static_cast<size_t>(w.rows));
  } else if (q == Quant::kQ4) {
    if (K % kQ4Group != 0)
      throw Error(ErrorCode::kInvalidArgument, "q4 needs the input dimension to be a multiple of 32, got " + std::to_string(K));
    out.data.resize(static_cast<size_t>(w.rows * K / 2));
    out.scales.resize(static_cast<size_t>(w.rows * K / kQ4Group));
  } else {
    throw Error(ErrorCode::kInvalidArgument, "quantize_matrix: no quantization given");
  }
  auto fn = [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t r = r0; r < r1; ++r) {
      weight_row_to_f32(w, r, row.data());
      if (q == Quant::kQ8) {
        float amax = 0.f;
        for (float v : row) amax = std::max(amax, std::fabs(v));
        const float scale = amax / 127.f, inv = scale > 0 ? 1.f / scale : 0.f;
        int8_t* dst = reinterpret_cast<int8_t*>(out.data.data()) + r * K;
        for (int64_t k = 0; k < K; ++k)
          dst[k] = static_cast<int8_t>(std::max(-127.f, std::min(127.f, std::nearbyint(row[k] * inv))));
        out.scales[r] = scale;
      } else {
        for (int64_t g = 0; g < K / kQ4Group; ++g) {
          const float* src = row.data() + g * kQ4Group;
          float amax = 0.f, mx = 0.f;  // the value of largest magnitude maps to -8 (Q4_0's choice)
          for (int i = 0; i < kQ4Group; ++i)
            if (std::fabs(src[i]) > amax) {
              amax = std::fabs(src[i]);
              mx = src[i];
            }
          const float d = mx / -8.f, id = d != 0.f ? 1.f / d : 0.f;
          uint8_t* dst = out.data.data() + (r * K + g * kQ4Group) / 2;
          for (int i = 0; i < 16; ++i) {
            const int lo = std::min(15, static_cast<int>(src[i] * id + 8.5f));
            const int hi = std::min(15, static_cast<int>(src[i + 16] * id + 8.5f));
            dst[i] = static_cast<uint8_t>(std::max(0, lo) | (std::max(0, hi) << 4));
          }
          out.scales[r * (K / kQ4Group) + g] = d;
        }
      }
    }
  };
  parallel_for(pool, w.rows, 64, fn);
  return out;
}

void dequantize_row(const WeightMatrix& w, int64_t row, float* out) {
  const int64_t K = w.cols;
  if (w.quant == Quant::kQ8) {
    const int8_t* src = static_cast<const int8_t*>(w.data) + row * K;
    const float s = w.scales[row];
    for (int64_t k = 0; k < K; ++k) out[k] = src[k] * s;
  } else if (w.quant == Quant::kQ4) {
    const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * K / 2;
    const float* sc = w.scales + row * (K / kQ4Group);
    for (int64_t g = 0; g < K / kQ4Group; ++g)
      for (int i = 0; i < 16; ++i) {
        const uint8_t b = src[g * 16 + i];
        out[g * kQ4Group + i] = (static_cast<int>(b & 15) - 8) * sc[g];
        out[g * kQ4Group + i + 16] = (static_cast<int>(b >> 4) - 8) * sc[g];
      }
  } else {
    weight_row_to_f32(w, row, out);
  }
}

bool matmul_quantized_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  return M <= 8 && vnni_decode(outs[0].w->quant) && kernels::gemv_vnni(x, M, outs, count, pool);
#else
  (void)x, (void)M, (void)outs, (void)count, (void)pool;
  return false;
#endif
}

void matmul_quantized(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool,
                      Precision precision) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
#if defined(__x86_64__) || defined(_M_X64)
  const MatmulOut out{&w, bias, y};
  if (matmul_quantized_group(x, M, &out, 1, pool)) return;
  if (M <= 8 && avx512_usable() && kernels::gemv_quant_avx512(x, M, w, bias, y, pool)) return;
#elif defined(__aarch64__)
  if (M <= 8 && kernels::gemv_quant_neon(x, M, w, bias, y, pool)) return;
#endif
  if (M <= 8) {  // portable GEMV
    auto fn = [&](int64_t n0, int64_t n1) {
      std::vector<float> row(static_cast<size_t>(K));
      for (int64_t n = n0; n < n1; ++n) {
        dequantize_row(w, n, row.data());
        for (int64_t m = 0; m < M; ++m) {
          const float* xr = x + m * K;
          float s = 0.f;
          for (int64_t k = 0; k < K; ++k) s += xr[k] * row[k];
          y[m * N + n] = s + (bias ? bias[n] : 0.f);
        }
      }
    };
    parallel_for(pool, N, 16, fn);
    return;
  }
  // Many rows (prefill): dequantize blocks of W rows (f32 for kF32, bf16 for kBF16) and use the regular kernels.
  const bool bf16 = precision == Precision::kBF16;
  const int64_t esz = bf16 ? 2 : 4;
  const int64_t nb = std::max<int64_t>(32, std::min<int64_t>(N, (int64_t(8) << 20) / (K * esz)) / 32 * 32);
  thread_local std::vector<uint8_t> wb;
  thread_local std::vector<float> yb;
  wb.resize(static_cast<size_t>(nb * K * esz));
  yb.resize(static_cast<size_t>(M * nb));
  uint8_t* wbp = wb.data();  // thread_local: the workers must use the caller's buffer
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t rows = std::min(nb, N - n0);
    auto conv = [&](int64_t r0, int64_t r1) {
      std::vector<float> row(static_cast<size_t>(K));
      for (int64_t r = r0; r < r1; ++r) {
        if (!bf16) {
          dequantize_row(w, n0 + r, reinterpret_cast<float*>(wbp) + r * K);
          continue;
        }
        dequantize_row(w, n0 + r, row.data());
        uint16_t* dst = reinterpret_cast<uint16_t*>(wbp) + r * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = f32_to_bf16(row[k]);
      }
    };
    parallel_for(pool, rows, 8, conv);
    WeightMatrix blk;
    blk.dtype = bf16 ? DType::kBF16 : DType::kF32;
    blk.data = wbp;
    blk.rows = rows;
    blk.cols = K;
    matmul(x, M, blk, bias ? bias + n0 : nullptr, yb.data(), pool, precision);
    for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * N + n0, yb.data() + m * rows, rows * sizeof(float));
  }
}

}  // namespace plm::cpu
