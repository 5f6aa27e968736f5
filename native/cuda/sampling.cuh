// Token sampling on the GPU (plain C++ declarations). Parameters live in device memory so that the
// launches can be replayed from a CUDA graph.
#pragma once
#include <cstdint>

namespace plm::cuda {

struct SampleParams {  // device copy, written before each step
  float temperature;   // <= 0: greedy argmax (first maximal index)
  int32_t top_k;       // <= 0: off
  float top_p;         // >= 1: off
  float min_p;         // <= 0: off
  uint64_t seed;
  uint64_t step;
};

constexpr int kArgmaxBlocks = 128;
// logits f32 [V] -> *d_out. scratch: device buffer of sample_scratch_bytes().
size_t sample_scratch_bytes();
void sample(const float* logits, int64_t V, const SampleParams* d_params, void* scratch, int32_t* d_out, void* stream);

// Philox4x32-10 first output word for (seed, counter): exposed for tests.
uint32_t philox_host(uint64_t seed, uint64_t counter);

}  // namespace plm::cuda
