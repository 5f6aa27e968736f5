// Small per-model tensors (norm weights, biases, layer scales, position embeddings) widened to f32 once.
// Large matrices are never copied: they are read in place from the mmap through cpu::WeightMatrix.
#pragma once
#include <string>
#include <vector>

#include "cpu/matmul.h"
#include "model/model.h"

namespace plm {

std::vector<float> load_f32(const LoadedModel& model, const std::string& name);
cpu::WeightMatrix matrix(const TensorView& t);  // 2D [rows, cols]; 4D conv weights flattened to [out, rest]

}  // namespace plm
