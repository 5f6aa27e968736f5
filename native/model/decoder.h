// The Llama 3 decoder on the CPU, as transformers computes it, in f32 with weights read in place.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/scratch.h"
#include "core/thread_pool.h"
#include "cpu/matmul.h"
#include "cpu/quant.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/quantized_file.h"
#include "model/runner.h"

namespace plm {

class Decoder {
 public:
  // Activation precision of the large matmuls (cpu::Precision::kBF16: AMX tiles where available).
  void set_precision(cpu::Precision p) { precision_ = p; }
  Decoder(const LoadedModel& model, ThreadPool* pool, int64_t max_context);
  // Converts the layer matrices and the LM head to weight-only int8/q4 (owned copies; the embedding table
  // stays in the checkpoint dtype). Returns the quantized bytes.
  size_t quantize(cpu::Quant q);
  // Takes the layer matrices and the LM head that `file` holds (views into its mmap, which must outlive the
  // decoder); the others stay in the checkpoint dtype. Bit-identical to quantize(file.quant()).
  void use_quantized(const QuantizedFile& file);

  // Runs n tokens appended to the cache. embeds [n, hidden] are the input rows (already merged);
  // logits_out [logits_rows, vocab] for the last logits_rows rows.
  void forward(float* embeds, int64_t n, int64_t logits_rows, float* logits_out, const CancelToken* cancel,
               const DumpFn& dump);
  // embeds [n, hidden] for token ids.
  void embed(const int32_t* ids, int64_t n, float* out) const;

  KvCache& cache() { return cache_; }
  int hidden() const { return cfg_.hidden_size; }
  int vocab() const { return cfg_.vocab_size; }

 private:
  struct Layer {
    std::vector<float> input_norm, post_norm;  // [hidden]
    cpu::WeightMatrix q, k, v, o, gate, up, down;
  };
  const TextConfig& cfg_;
  ThreadPool* pool_;
  cpu::Precision precision_ = cpu::Precision::kF32;
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;  // [hidden]
  std::vector<float> inv_freq_;    // [head_dim / 2]
  cpu::WeightMatrix embed_, lm_head_;
  std::vector<cpu::QuantizedMatrix> quantized_;  // storage behind quantized WeightMatrix views
  KvCache cache_;
  // Activations, kept between calls (core/scratch.h); sizes for n rows.
  Scratch<float> h_, proj_;           // [n, H] normed input, residual add's product (paths off AMX)
  Scratch<float> q_, attn_;           // [n, nh * hd] queries, attention output (f32 path)
  Scratch<float> cos_, sin_;          // [n, hd / 2]
  Scratch<float> gate_, up_;          // [n, I] (paths off AMX)
  cpu::TileActivations act_, attn_act_;  // SwiGLU [n, I] and attention [n, nh * hd] as bf16 tiles (AMX)
};

}  // namespace plm
