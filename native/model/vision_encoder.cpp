#include "model/vision_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/op_profile.h"
#include "cpu/attention.h"
#include "cpu/norms.h"
#include "model/rope_tables.h"
#include "model/weights_f32.h"

namespace plm {

void VisionEncoder::prepack_bf16() {
  prepacked_ = true;
  packed_.reserve(blocks_.size() * 4);  // stable addresses: the matrices point into these
  for (Block& blk : blocks_)
    for (cpu::WeightMatrix* w : {&blk.qkv, &blk.proj, &blk.fc1, &blk.fc2}) {
      packed_.emplace_back();
      if (cpu::prepack_bf16_tiles(w, &packed_.back(), pool_)) release_mapped_pages(*w);
      else packed_.pop_back();
    }
}

VisionEncoder::VisionEncoder(const LoadedModel& model, ThreadPool* pool) : cfg_(model.config.vision), pool_(pool) {
  const std::string p = "model.vision_tower.timm_model.";
  patch_ = matrix(model.get(p + "patch_embed.proj.weight"));
  if (cfg_.class_token) cls_ = load_f32(model, p + "cls_token");
  pos_ = load_f32(model, p + "pos_embed");
  if (cfg_.pre_norm) {
    pre_w_ = load_f32(model, p + "norm_pre.weight");
    pre_b_ = load_f32(model, p + "norm_pre.bias");
  }
  if (cfg_.post_norm) {
    post_w_ = load_f32(model, p + "norm.weight");
    post_b_ = load_f32(model, p + "norm.bias");
  }
  for (int b = 0; b < cfg_.depth; ++b) {
    const std::string B = p + "blocks." + std::to_string(b) + ".";
    Block blk;
    blk.norm1_w = load_f32(model, B + "norm1.weight");
    blk.norm1_b = load_f32(model, B + "norm1.bias");
    blk.norm2_w = load_f32(model, B + "norm2.weight");
    blk.norm2_b = load_f32(model, B + "norm2.bias");
    blk.qkv = matrix(model.get(B + "attn.qkv.weight"));
    blk.qkv_b = load_f32(model, B + "attn.qkv.bias");
    blk.proj = matrix(model.get(B + "attn.proj.weight"));
    blk.proj_b = load_f32(model, B + "attn.proj.bias");
    blk.fc1 = matrix(model.get(B + "mlp.fc1.weight"));
    blk.fc1_b = load_f32(model, B + "mlp.fc1.bias");
    blk.fc2 = matrix(model.get(B + "mlp.fc2.weight"));
    blk.fc2_b = load_f32(model, B + "mlp.fc2.bias");
    if (cfg_.layer_scale) {
      blk.gamma1 = load_f32(model, B + "gamma_1");
      blk.gamma2 = load_f32(model, B + "gamma_2");
    }
    blocks_.push_back(std::move(blk));
  }
  pe_rope_tables(cfg_, &rope_cos_, &rope_sin_);
}

void VisionEncoder::forward(const float* pixels, int64_t tiles, float* out, const CancelToken* cancel,
                            const DumpFn& dump, const std::function<void()>& between_blocks) {
  if (precision_ == cpu::Precision::kBF16 && !prepacked_) prepack_bf16();
  const int64_t C = cfg_.width, ps = cfg_.patch_size, S = cfg_.image_size, g = cfg_.grid();
  const int64_t P = g * g, N = cfg_.tokens(), prefix = cfg_.class_token ? 1 : 0;
  const int64_t hd = cfg_.head_dim, heads = cfg_.heads, mlp = cfg_.mlp_hidden;
  const int64_t M = tiles * N;          // rows of the batched matmuls
  const int64_t patch_len = 3 * ps * ps;

  // Patch embedding as a matmul: rows ordered (tile, py, px), columns (channel, ky, kx) like the conv weight.
  // The patch rows and their embedding use qkv_'s and h_'s memory, which the blocks need only after them.
  float* patches = qkv_.get(tiles * P * patch_len);  // [tiles, P, 3*ps*ps]
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t py = 0; py < g; ++py)
      for (int64_t px = 0; px < g; ++px) {
        float* dst = patches + ((t * P) + py * g + px) * patch_len;
        for (int64_t c = 0; c < 3; ++c)
          for (int64_t ky = 0; ky < ps; ++ky) {
            const float* src = pixels + ((t * 3 + c) * S + py * ps + ky) * S + px * ps;
            std::memcpy(dst + (c * ps + ky) * ps, src, ps * sizeof(float));
          }
      }
  float* embedded = h_.get(tiles * P * C);  // [tiles, P, C]
  { OpTimer t("vision.patch_embed"); cpu::matmul(patches, tiles * P, patch_, nullptr, embedded, pool_, precision_); }

  float* x = out;  // [tiles, N, C] residual stream, written in place in the output
  {
    OpTimer t_embed("vision.embed_pos+norm_pre");
    for (int64_t t = 0; t < tiles; ++t) {
      float* xt = x + t * N * C;
      if (prefix) std::memcpy(xt, cls_.data(), C * sizeof(float));
      std::memcpy(xt + prefix * C, embedded + t * P * C, P * C * sizeof(float));
      for (int64_t i = 0; i < N * C; ++i) xt[i] += pos_[i];
    }
    if (dump) dump("vision.embed", x, {tiles, N, C});
    if (!pre_w_.empty()) cpu::layer_norm(x, pre_w_.data(), pre_b_.data(), x, M, C, cfg_.layer_norm_eps, pool_);
  }
  if (dump) dump("vision.norm_pre", x, {tiles, N, C});

  float* h = h_.get(M * C);              // [M, C]
  float* qkv = qkv_.get(M * 3 * C);      // [M, 3C]
  cpu::AttentionShape attn_shape;       // one tile's tokens attend to each other
  attn_shape.q_len = N;
  attn_shape.kv_len = N;
  attn_shape.heads = attn_shape.kv_heads = static_cast<int>(heads);
  attn_shape.head_dim = static_cast<int>(hd);
  attn_shape.q_stride = attn_shape.kv_stride = 3 * C;
  attn_shape.out_stride = C;
  attn_shape.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  attn_shape.causal = false;
  // Attention output: f32 [tiles, N, heads, hd], or bf16 in the AMX tile order where attention and proj both
  // run on AMX (proj rounds its input to bf16 anyway).
  const bool attn_tiles = cpu::attention_tiles_available(precision_, attn_shape) &&
                          std::all_of(blocks_.begin(), blocks_.end(), [&](const Block& blk) {
                            return cpu::tile_chain_available(precision_, M, blk.proj);
                          });
  float* a = attn_tiles ? nullptr : a_.get(M * C);
  if (attn_tiles) a_act_.resize(M, C);
  // fc1 -> fc2 activations: f32 [M, mlp], or bf16 in the AMX tile order where fc1 and fc2 both run on AMX.
  const bool use_tiles = std::all_of(blocks_.begin(), blocks_.end(), [&](const Block& blk) {
    return cpu::tile_chain_available(precision_, M, blk.fc1) && cpu::tile_chain_available(precision_, M, blk.fc2);
  });
  float* f = use_tiles ? nullptr : f_.get(M * mlp);
  if (use_tiles) f_act_.resize(M, mlp);
  // 2D RoPE on q and k (the first 2C columns of qkv), every tile's rows restarting at position 0.
  const cpu::RopeInterleaved rope{rope_cos_.data(), rope_sin_.data(), N, static_cast<int>(prefix), static_cast<int>(hd), 2 * C};
  // x += gamma ⊙ (input · w^T + bias), the input as bf16 tiles (AMX: the add in the matmul's epilogue) or f32
  // (a pass over x after the matmul elsewhere).
  auto add_residual = [&](const cpu::WeightMatrix& w, const std::vector<float>& bias, const float* gamma,
                          const uint16_t* tiles, const float* input) {
    if (tiles) {
      const cpu::MatmulOut out{&w, bias.data(), x, cpu::Epilogue::kAccumulate, gamma};
      cpu::matmul_from_tiles(tiles, M, &out, 1, pool_);
    } else {
      cpu::matmul(input, M, w, bias.data(), x, pool_, precision_, cpu::Epilogue::kAccumulate, gamma, h);
    }
  };
  for (size_t b = 0; b < blocks_.size(); ++b) {
    if (cancel && cancel->is_cancelled()) throw Error(ErrorCode::kCancelled, "cancelled");
    Block& blk = blocks_[b];
    {
      // LayerNorm fused into the matmul's bf16 conversion and RoPE into its epilogue on AMX; elsewhere normed
      // into h first and rotated by a pass after. q, k and v stay in the qkv rows ([M, 3, heads, hd]): attention
      // reads them with a row stride of 3C.
      OpTimer t("vision.norm+matmul_qkv+rope");
      cpu::MatmulOut out{&blk.qkv, blk.qkv_b.data(), qkv, cpu::Epilogue::kRopeInterleaved};
      out.rope = &rope;
      const cpu::RowNorm norm{cpu::RowNorm::kLayerNorm, blk.norm1_w.data(), blk.norm1_b.data(), cfg_.layer_norm_eps};
      cpu::matmul_group(x, M, &out, 1, pool_, precision_, norm, h);
    }
    {
      OpTimer t_attn("vision.attention");
      for (int64_t t = 0; t < tiles; ++t) {
        cpu::AttentionShape s = attn_shape;
        if (attn_tiles) {
          s.out_tiles = a_act_.data();
          s.out_tiles_row0 = t * N;
        }
        const float* tile_qkv = qkv + t * N * 3 * C;
        cpu::attention(tile_qkv, tile_qkv + C, tile_qkv + 2 * C, attn_tiles ? nullptr : a + t * N * C, s, pool_,
                       precision_);
      }
    }
    const bool ls = !blk.gamma1.empty();
    {
      // x += gamma1 ⊙ proj(a)
      OpTimer t("vision.matmul_proj+residual");
      add_residual(blk.proj, blk.proj_b, ls ? blk.gamma1.data() : nullptr, attn_tiles ? a_act_.data() : nullptr, a);
    }
    // On AMX the GELU output goes to fc2 as bf16 tiles (fc2 rounds its input to bf16 anyway), not as f32.
    {
      OpTimer t("vision.norm+matmul_fc1_gelu");
      cpu::MatmulOut out{&blk.fc1, blk.fc1_b.data(), f, cpu::Epilogue::kGeluErf};
      if (use_tiles) out.tiles = f_act_.data();
      const cpu::RowNorm norm{cpu::RowNorm::kLayerNorm, blk.norm2_w.data(), blk.norm2_b.data(), cfg_.layer_norm_eps};
      cpu::matmul_group(x, M, &out, 1, pool_, precision_, norm, h);
    }
    {
      OpTimer t("vision.matmul_fc2+residual");
      add_residual(blk.fc2, blk.fc2_b, ls ? blk.gamma2.data() : nullptr, use_tiles ? f_act_.data() : nullptr, f);
    }
    if (dump) dump("vision.blocks." + std::to_string(b), x, {tiles, N, C});
    if (between_blocks && b + 1 < blocks_.size()) between_blocks();
  }
  if (!post_w_.empty()) {
    OpTimer t("vision.norm_post");
    cpu::layer_norm(x, post_w_.data(), post_b_.data(), x, M, C, cfg_.layer_norm_eps, pool_);
  }
}

}  // namespace plm
