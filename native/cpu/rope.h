// Rotary position embeddings in the two conventions PLM uses.
#pragma once
#include <cstdint>

namespace plm::cpu {

// Llama (HF rotate_half): for each row t and head, with c = cos[t, i], s = sin[t, i], i < hd/2:
//   x'[i] = x[i]·c − x[i + hd/2]·s ;  x'[i + hd/2] = x[i + hd/2]·c + x[i]·s
// x: [T, heads, hd] in place. cos, sin: [T, hd/2] (angle = position · inv_freq[i]).
void rope_rotate_half(float* x, int64_t T, int heads, int hd, const float* cos, const float* sin);

// Perception Encoder 2D RoPE (interleaved pairs): for pair p (dims 2p, 2p+1), c = cos[t, p], s = sin[t, p]:
//   x'[2p] = x[2p]·c − x[2p+1]·s ;  x'[2p+1] = x[2p+1]·c + x[2p]·s
// x: [T, heads, hd] in place; rows t < prefix (the CLS token) are left unrotated. cos, sin: [T - prefix, hd/2].
void rope_interleaved(float* x, int64_t T, int heads, int hd, int prefix, const float* cos, const float* sin);
// Same for rows t0 .. t1-1 only, where row t's heads*hd values start at x + t * row_stride (q or k inside a
// fused [T, 3, heads, hd] qkv buffer: row_stride 3*heads*hd). Row ranges may run on different threads.
void rope_interleaved_rows(float* x, int64_t row_stride, int64_t t0, int64_t t1, int heads, int hd, int prefix,
                           const float* cos, const float* sin);

// Angles for the Llama rope: out_cos/out_sin [T, hd/2] for positions pos0 .. pos0+T-1.
void rope_llama_table(const float* inv_freq, int hd, int64_t pos0, int64_t T, float* out_cos, float* out_sin);

}  // namespace plm::cpu
