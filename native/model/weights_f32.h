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

// After a matrix was converted into memory of our own (quantized, prepacked): drops its source pages of the
// read-only mmap from this process so resident memory holds one copy, not two. Pages read again later
// (embedding rows, an f32 call) fault back in from the file. A no-op where there is no madvise.
void release_mapped_pages(const cpu::WeightMatrix& source);

}  // namespace plm
