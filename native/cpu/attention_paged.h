// Causal attention of query rows over a paged KV cache (model/kv_cache.h's block layout): the decoder's
// attention for prefill chunks and for batched decode. Every (query row, head) is computed by the same
// operations whatever the other rows of the call are (how many, which sequences, which positions): keys in
// chunks of 16 positions in order, scores as a multiply-add chain over head_dim, an online softmax per chunk, the
// probabilities times V as a chain over positions. A row's output therefore does not depend on batching or
// on how a prompt was split into chunks.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"

namespace plm::cpu {

// One layer's view of the paged cache.
struct PagedKv {
  const float* base;        // the pool
  int64_t block_stride;     // floats from block b to block b + 1
  int64_t layer_offset;     // floats from a block's start to this layer's K
  int64_t value_offset;     // floats from this layer's K to its V
  int64_t block_tokens;     // positions per block (a multiple of 16)
  int kv_heads = 0;
  int head_dim = 0;         // a multiple of 16 for the AVX-512 kernel

  // K of a block: [kv_heads, head_dim, block_tokens]; V: [block_tokens, kv_heads * head_dim].
  const float* keys(int32_t block) const { return base + block * block_stride + layer_offset; }
  const float* values(int32_t block) const { return keys(block) + value_offset; }
};

// Query rows: row i has heads x head_dim values at q + i * q_stride, reads the first keys[i] positions of the
// sequence whose block table is tables[i] (entries: block ids), and writes out + i * out_stride.
struct PagedQueries {
  const float* q;
  int64_t q_stride;
  float* out;
  int64_t out_stride;
  int64_t rows;
  int heads;
  float scale;
  const int32_t* const* tables;  // [rows]
  const int64_t* keys;           // [rows], >= 1
};

void attention_paged(const PagedQueries& q, const PagedKv& kv, ThreadPool* pool);

// Writes rows of new keys and values ([n, kv_heads * head_dim] each, row r at position pos0 + r of the sequence
// with block table `table`) into the cache.
void store_kv_rows(const float* k, const float* v, int64_t n, int64_t pos0, const int32_t* table, const PagedKv& kv,
                   float* base);

}  // namespace plm::cpu
