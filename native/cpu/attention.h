// Scaled dot-product attention with grouped KV heads, f32, flash-style (no [Tq, Tk] matrix in memory).
#pragma once
#include <cstdint>

#include "core/thread_pool.h"
#include "cpu/matmul.h"

namespace plm::cpu {

struct AttentionShape {
  int64_t q_len = 0;       // Tq
  int64_t kv_len = 0;      // Tk
  int heads = 0;           // query heads
  int kv_heads = 0;        // key/value heads; query head h reads kv head h / (heads / kv_heads)
  int head_dim = 0;
  int64_t q_stride = 0;    // floats between consecutive rows of q (and of out unless out_stride is set)
  int64_t kv_stride = 0;   // floats between consecutive rows of k and v
  int64_t out_stride = 0;  // floats between consecutive rows of out; 0: q_stride
  float scale = 0.f;       // usually head_dim^-0.5
  bool causal = false;     // query row i sees keys 0 .. q_offset + i
  int64_t q_offset = 0;    // position of query row 0 among the keys (cache length before this chunk)
  // Where set (only where attention_tiles_available): the output goes here instead of out, rounded to bf16 in
  // the tile order of cpu::TileActivations [rows][heads * head_dim], query row i at row out_tiles_row0 + i, for
  // a next matmul_from_tiles (the attention projection). The same bits the f32 output and that matmul's own
  // conversion give.
  uint16_t* out_tiles = nullptr;
  int64_t out_tiles_row0 = 0;

  int64_t out_row_stride() const { return out_stride ? out_stride : q_stride; }
};

// q: [Tq, heads, hd] (row stride q_stride), k, v: [Tk, kv_heads, hd] (row stride kv_stride),
// out: [Tq, heads, hd] (row stride out_row_stride()).
void attention(const float* q, const float* k, const float* v, float* out, const AttentionShape& s, ThreadPool* pool);

// Same with an explicit precision. kBF16: Q, K, V and the probabilities rounded to bf16, Q·K^T and P·V with f32
// accumulation on AMX tiles (attention_amx.cpp) or with AVX512-BF16 vdpbf16ps (attention_avx512bf16.cpp, same
// arithmetic), softmax in f32; used for >= 16 query rows with head_dim % 32 == 0 where the CPU has AVX512-BF16,
// else the f32 kernels.
void attention(const float* q, const float* k, const float* v, float* out, const AttentionShape& s, ThreadPool* pool,
               Precision precision);

// True when attention at `precision` over this shape runs a bf16 kernel (AMX or AVX512-BF16), which can write
// AttentionShape::out_tiles.
bool attention_tiles_available(Precision precision, const AttentionShape& s);

// The kernel attention over many query rows (>= 16, head_dim % 32 == 0) runs at `precision` on this CPU, e.g.
// "avx512-bf16 (flash, vdpbf16ps)", for `plm info`.
const char* attention_kernel_name(Precision precision);

}  // namespace plm::cpu
