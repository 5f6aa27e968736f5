// Rotary tables computed once per model on the host, shared by the CPU and CUDA runners.
#pragma once
#include <vector>

#include "core/config.h"

namespace plm {

// Llama inverse frequencies [head_dim / 2] in f32 as transformers computes them, llama3 scaling applied.
std::vector<float> llama_rope_inv_freq(const TextConfig& text);

// Perception Encoder 2D RoPE angles per (patch, pair): cos and sin [patches, head_dim / 2], patches
// row-major, the first head_dim/4 pairs from the column (x) and the rest from the row (y), grid offset
// applied. The class token is not in the table (it stays unrotated).
void pe_rope_tables(const VisionConfig& vision, std::vector<float>* cos, std::vector<float>* sin);

}  // namespace plm
