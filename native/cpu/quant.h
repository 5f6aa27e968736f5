// Weight-only quantization (int8 per row, 4-bit groups of 32) converted at load, and the matmul for it.
// Decode (M <= 8) reads the quantized bytes directly (AVX-512 GEMV in gemm_quant_avx512.cpp, NEON in
// gemm_quant_neon.cpp, a portable loop elsewhere); larger M dequantizes blocks of rows to bf16 and runs the
// regular kernels on them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/matmul.h"

namespace plm::cpu {

constexpr int kQ4Group = 32;

// Owns the quantized bytes and scales; view() is the WeightMatrix to pass to matmul().
struct QuantizedMatrix {
  std::vector<uint8_t> data;
  std::vector<float> scales;
  int64_t rows = 0, cols = 0;
  Quant quant = Quant::kNone;
  WeightMatrix view() const {
    WeightMatrix w;
    w.data = data.data();
    w.rows = rows;
    w.cols = cols;
    w.quant = quant;
    w.scales = scales.data();
    return w;
  }
  size_t bytes() const { return data.size() + scales.size() * sizeof(float); }
};

// "none" | "int8" | "q4" -> Quant; throws kInvalidArgument otherwise.
Quant parse_quant(const std::string& name);
const char* quant_name(Quant q);

// Quantizes a float matrix (bf16/f16/f32). kQ4 needs cols % 32 == 0 (throws otherwise).
QuantizedMatrix quantize_matrix(const WeightMatrix& w, Quant q, ThreadPool* pool);

// Row `row` of a quantized matrix as f32.
void dequantize_row(const WeightMatrix& w, int64_t row, float* out);

// y = x · W^T + bias for a quantized W (called by matmul()).
// The VNNI decode path for quantized weights (M <= 8), of matmul_group and of matmul_quantized: one or several
// int8 (or q4) matrices over one x in one parallel region, x quantized once. False (nothing done) where it
// doesn't run (no VNNI, PLM_Q8_EXACT_X / PLM_Q4_EXACT_X set, mixed quantizations, M > 8).
bool matmul_quantized_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool);
void matmul_quantized(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool,
                      Precision precision);

}  // namespace plm::cpu
