// The Llama 3 decoder on the CPU, as transformers computes it, in f32 with weights read in place, over the
// paged KV cache (model/kv_cache.h) of any number of sequences: a prefill chunk of one sequence, or one decode
// token for each of many sequences at once. A row's result never depends on the other rows of a call (see
// cpu/attention_paged.h and the row-invariant GEMV in cpu/gemm_avx512.cpp), so batching changes no bits.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/scratch.h"
#include "core/thread_pool.h"
#include "cpu/matmul.h"
#include "cpu/attention_paged.h"
#include "cpu/quant.h"
#include "model/kv_cache.h"
#include "model/model.h"
#include "model/quantized_file.h"
#include "model/runner.h"

namespace plm {

class Decoder {
 public:
  // Activation precision of the large matmuls (cpu::Precision::kBF16: AMX tiles where available).
  // cpu::Precision::kF32RowInvariant (precision "f32" asked for): every matmul row is computed as the decode GEMV
  // computes it, so a token's keys, values and logits are the same bits whichever chunk or batch computed them,
  // and a reused prefix equals a recomputed one. Batched decode rows are invariant at every precision.
  void set_precision(cpu::Precision p) { precision_ = p; }
  Decoder(const LoadedModel& model, ThreadPool* pool, KvCache* cache);
  // Converts the layer matrices and the LM head to weight-only int8/q4 (owned copies; the embedding table
  // stays in the checkpoint dtype). Returns the quantized bytes.
  size_t quantize(cpu::Quant q);
  // Takes the layer matrices and the LM head that `file` holds (views into its mmap, which must outlive the
  // decoder); the others stay in the checkpoint dtype. Bit-identical to quantize(file.quant()).
  void use_quantized(const QuantizedFile& file);

  // Prefill: x [n, hidden] (embeddings, features merged) are positions [pos0, pos0 + n) of the sequence whose
  // block table is `table` (blocks for those positions already allocated); their keys and values go to the
  // cache. logits_out [logits_rows, vocab] for the last logits_rows rows. x is overwritten.
  // between_layers, when set, runs after each layer (the scheduler runs other sequences' decode steps there, so
  // they keep streaming during a long chunk; it must not call prefill).
  void prefill(float* x, int64_t n, const int32_t* table, int64_t pos0, int64_t logits_rows, float* logits_out,
               const CancelToken* cancel, const DumpFn& dump, const std::function<void()>& between_layers = nullptr);
  // Decode: x [R, hidden], row r the token at position pos[r] of the sequence with block table tables[r] (its
  // block allocated); logits_out [R, vocab]. Rows go through the matmuls in groups of decode_group() rows.
  void decode(float* x, int64_t R, const int32_t* const* tables, const int64_t* pos, float* logits_out);
  // Rows per matmul call in decode: what the row-invariant GEMV of every decoder matrix takes (80 on AMX at bf16,
  // else 8), so that a group's rows are computed as each row alone.
  int64_t decode_group() const;
  // embeds [n, hidden] for token ids.
  void embed(const int32_t* ids, int64_t n, float* out) const;

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
  KvCache* cache_;
  cpu::PagedKv layer_kv(int layer) const;
  // Contiguous copies of one layer's keys and values [T, kv_heads * hd] for the AMX attention (prefill at bf16).
  void gather_kv(const int32_t* table, int64_t T, int layer, float* k, float* v) const;
  // Activations, kept between calls (core/scratch.h); sizes for n rows.
  // Two sets, one for prefill and one for decode: a decode step may run between the layers of a prefill chunk.
  struct Buffers {
    Scratch<float> h, proj;     // [n, H] normed input, residual add's product (paths off AMX)
    Scratch<float> q, attn;     // [n, nh * hd] queries, attention output (f32 path)
    Scratch<float> k, v;        // [n, nkv * hd] new keys and values (before they go to the blocks)
    Scratch<float> cos, sin;    // [n, hd / 2]
    Scratch<float> gate, up;    // [n, I] (paths off AMX)
  };
  Buffers pre_, dec_;
  Scratch<float> kc_, vc_;      // [T, nkv * hd] gathered keys and values (AMX attention, prefill)
  cpu::TileActivations act_, attn_act_;  // SwiGLU [n, I] and attention [n, nh * hd] as bf16 tiles (AMX)
};

}  // namespace plm
