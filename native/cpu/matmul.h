// Linear layers: y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]), the PyTorch nn.Linear layout.
// Weights are read in their stored dtype (bf16, f16 or f32) straight from the mmap; accumulation is f32.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace plm::cpu {

// A weight matrix [rows = out_features, cols = in_features], row-major, any float dtype.
struct WeightMatrix {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// y[M, N] = x[M, K] · W^T + bias. bias may be null. y must not alias x.
void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);

// Reads one row of W as f32 (embedding lookup, tied heads).
void weight_row_to_f32(const WeightMatrix& w, int64_t row, float* out);

}  // namespace plm::cpu
