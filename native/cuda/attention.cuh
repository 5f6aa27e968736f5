// Attention on the GPU (plain C++ declarations; bf16 buffers are uint16_t*).
#pragma once
#include <cstdint>

namespace plm::cuda {

// Flash attention (mma.sync, online softmax, no [Tq, Tk] matrix in memory) for head_dim 16, 32, 48, 64,
// 96, 128 with 16-byte aligned rows; any other head_dim <= 256 takes a simple one-warp-per-row kernel. q: [batch][Tq rows, stride q_stride] with head h at columns h*hd; k, v: [batch][Tk rows,
// kv_stride] with kv head h / (heads / kv_heads); out like q (o_stride). Batch b starts *_batch_stride
// elements after batch b-1 (ViT: one tile per batch entry). causal: query row i sees keys <= q_offset + i.
struct FlashParams {
  const uint16_t* q = nullptr;
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  uint16_t* o = nullptr;
  int64_t q_stride = 0, kv_stride = 0, o_stride = 0;
  int64_t q_batch_stride = 0, kv_batch_stride = 0, o_batch_stride = 0;
  int batch = 1, q_len = 0, kv_len = 0, heads = 0, kv_heads = 0, head_dim = 0;
  float scale = 0.f;
  bool causal = false;
  int q_offset = 0;
};
bool flash_supported(int head_dim);
void flash_attention(const FlashParams& p, void* stream);

// Decode attention for one query token, split over the keys (flash-decoding) then combined.
// q: f32 [heads, hd] (rope applied); k_cache, v_cache: bf16 [capacity, kv_heads, hd]; the key count is
// read from the device (*d_len_minus_one + 1, i.e. the position of the new token + 1) so the launch can be
// replayed from a CUDA graph. partial: f32 scratch [heads, splits, hd + 2]. out: bf16 [heads, hd].
constexpr int kDecodeSplits = 32;
void decode_attention(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, const int32_t* d_pos,
                      int heads, int kv_heads, int hd, float scale, float* partial, uint16_t* out, void* stream);

}  // namespace plm::cuda
