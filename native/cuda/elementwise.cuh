// Elementwise and data-movement kernels: SwiGLU, GELU, patch extraction, vision embedding assembly,
// projector pooling, token embedding + placeholder scatter (plain C++ declarations).
#pragma once
#include <cstdint>

namespace plm::cuda {

// gu: bf16 [M, 2I] (gate columns [0, I), up columns [I, 2I)); out: bf16 [M, I] = silu(gate) * up.
void swiglu(const uint16_t* gu, int64_t M, int64_t I, uint16_t* out, void* stream);
// x: bf16 [n], in place: exact erf GELU.
void gelu_inplace(uint16_t* x, int64_t n, void* stream);

// pixels f32 [tiles, 3, S, S] -> patches bf16 [tiles * (S/ps)^2, kpad], column c*ps*ps + ky*ps + kx, zeros
// for columns >= 3*ps*ps (kpad rounds the conv's K up to a multiple of 8 for the tensor-core GEMM).
void im2col_patches(const float* pixels, int64_t tiles, int S, int ps, int kpad, uint16_t* out, void* stream);

// out f32 [tiles, N, C]: row 0 = cls + pos[0] when cls (prefix 1), rows prefix+p = patch[tile, p] + pos[prefix+p].
// patch f32 [tiles * P, C]; pos f32 [N, C], N = P + prefix.
void vision_assemble(const float* patch, const float* cls, const float* pos, int64_t tiles, int64_t P, int64_t C,
                     float* out, void* stream);

// x f32 [tiles, N, C] -> out bf16 [tiles, N - prefix, C] (drops the CLS row).
void drop_prefix_bf16(const float* x, int64_t tiles, int64_t N, int prefix, int64_t C, uint16_t* out, void* stream);

// f f32 [tiles, G*G, D] -> out f32 [tiles, (G/r)^2, D]: mean over r x r patches, row-major output grid.
void avg_pool(const float* f, int64_t tiles, int G, int r, int64_t D, float* out, void* stream);

// out f32 [n, H]: row i = feats[feat_idx[i]] when feat_idx && feat_idx[i] >= 0, else embed[ids[i]] (bf16 [V, H]).
// ids, feat_idx: device int32 [n].
void embed_rows(const int32_t* ids, const int32_t* feat_idx, const uint16_t* embed, const float* feats, int64_t n,
                int64_t H, float* out, void* stream);

}  // namespace plm::cuda
