// Rotary embeddings on the GPU (plain C++ declarations).
#pragma once
#include <cstdint>

namespace plm::cuda {

// Llama rotate_half on a fused qkv buffer, rows t = 0..M-1 at position pos0 + t:
// qkv bf16 [M, ld] with q heads at columns [0, nh*hd), k at [nh*hd, (nh+nkv)*hd), v after.
// q is rotated in place; rotated k and v are written to the caches (bf16 [capacity, nkv, hd]) at pos0 + t.
// The angle is (float)pos * inv_freq[i] in f32 with accurate cosf/sinf, as transformers computes it.
void rope_llama_prefill(uint16_t* qkv, int64_t ld, int64_t M, int nh, int nkv, int hd, int64_t pos0,
                        const float* inv_freq, uint16_t* k_cache, uint16_t* v_cache, void* stream);

// Decode: qkv f32 [(nh + 2 nkv) hd] for one token at position *d_pos (device). Writes q_out f32 [nh hd]
// and the cache rows at *d_pos.
void rope_llama_decode(const float* qkv, const int32_t* d_pos, int nh, int nkv, int hd, const float* inv_freq,
                       float* q_out, uint16_t* k_cache, uint16_t* v_cache, void* stream);

// Perception Encoder 2D RoPE (interleaved pairs) in place on the q and k parts of qkv bf16 [tiles * N, ld]
// (q at columns [0, C), k at [C, 2C), C = heads * hd). Tokens t < prefix of each tile (CLS) stay unrotated;
// cos, sin: f32 [N - prefix, hd / 2].
void rope_2d(uint16_t* qkv, int64_t ld, int64_t tiles, int64_t N, int prefix, int heads, int hd, const float* cos,
             const float* sin, void* stream);

}  // namespace plm::cuda
