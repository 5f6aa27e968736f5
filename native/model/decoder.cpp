#include "model/decoder.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/op_profile.h"
#include "cpu/activations.h"
#include "cpu/attention.h"
#include "cpu/norms.h"
#include "cpu/rope.h"
#include "model/rope_tables.h"
#include "model/weights_f32.h"

namespace plm {

Decoder::Decoder(const LoadedModel& model, ThreadPool* pool, KvCache* cache)
    : cfg_(model.config.text), pool_(pool), cache_(cache) {
  const std::string p = "model.language_model.";
  for (int l = 0; l < cfg_.num_layers; ++l) {
    const std::string L = p + "layers." + std::to_string(l) + ".";
    Layer layer;
    layer.input_norm = load_f32(model, L + "input_layernorm.weight");
    layer.post_norm = load_f32(model, L + "post_attention_layernorm.weight");
    layer.q = matrix(model.get(L + "self_attn.q_proj.weight"));
    layer.k = matrix(model.get(L + "self_attn.k_proj.weight"));
    layer.v = matrix(model.get(L + "self_attn.v_proj.weight"));
    layer.o = matrix(model.get(L + "self_attn.o_proj.weight"));
    layer.gate = matrix(model.get(L + "mlp.gate_proj.weight"));
    layer.up = matrix(model.get(L + "mlp.up_proj.weight"));
    layer.down = matrix(model.get(L + "mlp.down_proj.weight"));
    layers_.push_back(std::move(layer));
  }
  final_norm_ = load_f32(model, p + "norm.weight");
  embed_ = matrix(model.get(p + "embed_tokens.weight"));
  lm_head_ = matrix(model.lm_head());
  inv_freq_ = llama_rope_inv_freq(cfg_);
}

size_t Decoder::quantize(cpu::Quant q) {
  size_t bytes = 0;
  quantized_.reserve(layers_.size() * 7 + 1);
  auto conv = [&](cpu::WeightMatrix& w) {
    if (q == cpu::Quant::kQ4 && w.cols % cpu::kQ4Group != 0) return;  // stays in the checkpoint dtype
    quantized_.push_back(cpu::quantize_matrix(w, q, pool_));
    const cpu::WeightMatrix src = w;
    w = quantized_.back().view();
    bytes += quantized_.back().bytes();
    release_mapped_pages(src);  // resident memory: the quantized bytes, not both
  };
  for (Layer& L : layers_)
    for (cpu::WeightMatrix* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) conv(*w);
  conv(lm_head_);
  return bytes;
}

void Decoder::use_quantized(const QuantizedFile& file) {
  for (int l = 0; l < cfg_.num_layers; ++l) {
    Layer& L = layers_[l];
    cpu::WeightMatrix* ws[7] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};  // kQuantLayerMatrices order
    for (int i = 0; i < 7; ++i)
      if (const cpu::WeightMatrix* w = file.find(quant_layer_matrix_name(l, i))) *ws[i] = *w;
  }
  if (const cpu::WeightMatrix* w = file.find(kQuantLmHead)) lm_head_ = *w;
}

void Decoder::embed(const int32_t* ids, int64_t n, float* out) const {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
      throw Error(ErrorCode::kInvalidArgument, "token id " + std::to_string(ids[i]) + " at position " +
                                                   std::to_string(i) + " is outside the vocabulary (0.." +
                                                   std::to_string(cfg_.vocab_size - 1) + ")");
    cpu::weight_row_to_f32(embed_, ids[i], out + i * cfg_.hidden_size);
  }
}

cpu::PagedKv Decoder::layer_kv(int layer) const {
  cpu::PagedKv kv;
  kv.base = cache_->base();
  kv.block_stride = cache_->block_stride();
  kv.layer_offset = cache_->layer_offset(layer);
  kv.value_offset = cache_->value_offset();
  kv.block_tokens = KvCache::kBlockTokens;
  kv.kv_heads = cfg_.num_kv_heads;
  kv.head_dim = cfg_.head_dim;
  return kv;
}

void Decoder::gather_kv(const int32_t* table, int64_t T, int layer, float* k, float* v) const {
  const cpu::PagedKv kv = layer_kv(layer);
  const int64_t B = kv.block_tokens, width = int64_t(kv.kv_heads) * kv.head_dim;
  parallel_for(pool_, (T + B - 1) / B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* kb = kv.keys(table[b]);  // [width][B]
      const float* vb = kv.values(table[b]);
      const int64_t rows = std::min(B, T - b * B);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < width; ++c) k[(b * B + r) * width + c] = kb[c * B + r];
      std::memcpy(v + b * B * width, vb, static_cast<size_t>(rows * width) * sizeof(float));
    }
  });
}

void Decoder::prefill(float* x, int64_t n, const int32_t* table, int64_t pos0, int64_t logits_rows, float* logits_out,
                      const CancelToken* cancel, const DumpFn& dump, const std::function<void()>& between_layers) {
  const int64_t H = cfg_.hidden_size, hd = cfg_.head_dim, nh = cfg_.num_heads, nkv = cfg_.num_kv_heads;
  const int64_t qw = nh * hd, kvw = nkv * hd, I = cfg_.intermediate_size, T = pos0 + n;
  if (dump) dump("hidden.embed", x, {n, H});

  float* h = pre_.h.get(n * H);                      // [n, H] normed input
  float* q = pre_.q.get(n * qw);                     // [n, nh, hd]
  float* cos = pre_.cos.get(n * hd / 2);             // [n, hd/2]
  float* sin = pre_.sin.get(n * hd / 2);
  // Where the MLP's matmuls run on AMX (prefill), gate/up compute SwiGLU in their epilogue and hand it to the
  // down projection as bf16 tiles: the f32 gate and up products are never stored.
  const bool swiglu_tiles = std::all_of(layers_.begin(), layers_.end(), [&](const Layer& L) {
    return cpu::tile_chain_available(precision_, n, L.gate) && cpu::tile_chain_available(precision_, n, L.up) &&
           cpu::tile_chain_available(precision_, n, L.down);
  });
  float* gate = swiglu_tiles ? nullptr : pre_.gate.get(n * I);  // [n, I] each, off AMX
  float* up = swiglu_tiles ? nullptr : pre_.up.get(n * I);
  if (swiglu_tiles) act_.resize(n, I);
  // On AMX (bf16) the attention reads contiguous copies of the sequence's keys and values and may hand its
  // output to o as bf16 tiles; elsewhere the paged kernel reads the blocks in place.
  cpu::AttentionShape attn_shape;
  attn_shape.q_len = n;
  attn_shape.kv_len = T;
  attn_shape.heads = static_cast<int>(nh);
  attn_shape.kv_heads = static_cast<int>(nkv);
  attn_shape.head_dim = static_cast<int>(hd);
  attn_shape.q_stride = qw;
  attn_shape.kv_stride = kvw;
  attn_shape.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  attn_shape.causal = true;
  attn_shape.q_offset = pos0;
  const bool dense_attention = cpu::attention_tiles_available(precision_, attn_shape);
  const bool attn_tiles = dense_attention && std::all_of(layers_.begin(), layers_.end(), [&](const Layer& L) {
                            return cpu::tile_chain_available(precision_, n, L.o);
                          });
  float* attn = attn_tiles ? nullptr : pre_.attn.get(n * qw);  // [n, nh, hd]
  if (attn_tiles) {
    attn_act_.resize(n, qw);
    attn_shape.out_tiles = attn_act_.data();
  }
  float* kc = dense_attention ? kc_.get(T * kvw) : nullptr;  // [T, nkv, hd] contiguous keys (AMX attention)
  float* vc = dense_attention ? vc_.get(T * kvw) : nullptr;
  float* k = dense_attention ? kc + pos0 * kvw : pre_.k.get(n * kvw);  // [n, nkv, hd] this chunk's keys
  float* v = dense_attention ? vc + pos0 * kvw : pre_.v.get(n * kvw);
  std::vector<const int32_t*> tables(static_cast<size_t>(n), table);  // paged attention: every row, one sequence
  std::vector<int64_t> keys(static_cast<size_t>(n));                  // [n] row i sees positions 0 .. pos0 + i
  for (int64_t i = 0; i < n; ++i) keys[i] = pos0 + i + 1;
  cpu::PagedQueries pq{q, qw, attn, qw, n, static_cast<int>(nh), attn_shape.scale, tables.data(), keys.data()};
  cpu::rope_llama_table(inv_freq_.data(), static_cast<int>(hd), pos0, n, cos, sin);
  for (int l = 0; l < cfg_.num_layers; ++l) {
    if (cancel && cancel->is_cancelled()) throw Error(ErrorCode::kCancelled, "cancelled");
    Layer& L = layers_[l];
    const cpu::PagedKv kv = layer_kv(l);
    {
      // RMSNorm fused into the matmuls' bf16 conversion on AMX (prefill); elsewhere normed into h first.
      OpTimer t("decoder.norm+matmul_qkv");
      const cpu::MatmulOut outs[3] = {{&L.q, nullptr, q}, {&L.k, nullptr, k}, {&L.v, nullptr, v}};
      const cpu::RowNorm norm{cpu::RowNorm::kRmsNorm, L.input_norm.data(), nullptr, cfg_.rms_norm_eps};
      cpu::matmul_group(x, n, outs, 3, pool_, precision_, norm, h);
    }
    {
      OpTimer t("decoder.rope+attention");
      parallel_for(pool_, n, 64, [&](int64_t r0, int64_t r1) {  // rows split over the pool
        const int64_t half = hd / 2;
        cpu::rope_rotate_half(q + r0 * qw, r1 - r0, static_cast<int>(nh), static_cast<int>(hd),
                              cos + r0 * half, sin + r0 * half);
        cpu::rope_rotate_half(k + r0 * kvw, r1 - r0, static_cast<int>(nkv), static_cast<int>(hd),
                              cos + r0 * half, sin + r0 * half);
      });
      cpu::store_kv_rows(k, v, n, pos0, table, kv, cache_->base());
      if (dense_attention) {
        if (pos0 > 0) gather_kv(table, pos0, l, kc, vc);
        cpu::attention(q, kc, vc, attn, attn_shape, pool_, precision_);
      } else {
        cpu::attention_paged(pq, kv, pool_);
      }
    }
    {
      // x += o(attn): the residual add in the matmul's epilogue on AMX (prefill), a pass over x elsewhere.
      OpTimer t("decoder.matmul_o+residual");
      if (attn_tiles) {
        const cpu::MatmulOut out{&L.o, nullptr, x, cpu::Epilogue::kAccumulate};
        cpu::matmul_from_tiles(attn_act_.data(), n, &out, 1, pool_);
      } else {
        cpu::matmul(attn, n, L.o, nullptr, x, pool_, precision_, cpu::Epilogue::kAccumulate, nullptr, pre_.proj.get(n * H));
      }
    }
    const cpu::RowNorm post_norm{cpu::RowNorm::kRmsNorm, L.post_norm.data(), nullptr, cfg_.rms_norm_eps};
    if (swiglu_tiles) {
      {
        OpTimer t("decoder.norm+matmul_gate_up+silu_mul");
        cpu::MatmulOut out{&L.gate, nullptr, nullptr, cpu::Epilogue::kSwiGLU};
        out.tiles = act_.data();
        out.w_up = &L.up;
        cpu::matmul_group(x, n, &out, 1, pool_, precision_, post_norm, h);
      }
      OpTimer t("decoder.matmul_down+residual");
      const cpu::MatmulOut out{&L.down, nullptr, x, cpu::Epilogue::kAccumulate};
      cpu::matmul_from_tiles(act_.data(), n, &out, 1, pool_);
    } else {
      {
        OpTimer t("decoder.norm+matmul_gate_up");
        const cpu::MatmulOut outs[2] = {{&L.gate, nullptr, gate}, {&L.up, nullptr, up}};
        cpu::matmul_group(x, n, outs, 2, pool_, precision_, post_norm, h);
      }
      { OpTimer t("decoder.silu_mul"); cpu::silu_mul(gate, up, gate, n * I, pool_); }
      OpTimer t("decoder.matmul_down+residual");
      cpu::matmul(gate, n, L.down, nullptr, x, pool_, precision_, cpu::Epilogue::kAccumulate, nullptr, pre_.proj.get(n * H));
    }
    if (dump) dump("hidden.layers." + std::to_string(l), x, {n, H});
    if (between_layers && l + 1 < cfg_.num_layers) between_layers();
  }
  if (logits_rows <= 0) return;
  logits_rows = std::min(logits_rows, n);
  // Only the rows that need logits are normed, unless every row is being dumped.
  const int64_t norm_rows = dump ? n : logits_rows;
  const float* src = x + (n - norm_rows) * H;
  cpu::rms_norm(src, final_norm_.data(), h, norm_rows, H, cfg_.rms_norm_eps);
  if (dump) dump("hidden.norm", h, {n, H});
  cpu::matmul(h + (norm_rows - logits_rows) * H, logits_rows, lm_head_, nullptr, logits_out, pool_, precision_);
}

int64_t Decoder::decode_group() const {
  int64_t rows = cpu::decode_rows_per_call(precision_, lm_head_);
  for (const Layer& L : layers_)
    for (const cpu::WeightMatrix* w : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      rows = std::min(rows, cpu::decode_rows_per_call(precision_, *w));
  return rows;
}

void Decoder::decode(float* x, int64_t R, const int32_t* const* tables, const int64_t* pos, float* logits_out) {
  const int64_t H = cfg_.hidden_size, hd = cfg_.head_dim, nh = cfg_.num_heads, nkv = cfg_.num_kv_heads;
  const int64_t qw = nh * hd, kvw = nkv * hd, I = cfg_.intermediate_size, half = hd / 2, V = cfg_.vocab_size;
  float* h = dec_.h.get(R * H);        // [R, H] normed input
  float* q = dec_.q.get(R * qw);       // [R, nh, hd]
  float* k = dec_.k.get(R * kvw);      // [R, nkv, hd]
  float* v = dec_.v.get(R * kvw);
  float* attn = dec_.attn.get(R * qw);  // [R, nh, hd]
  float* gate = dec_.gate.get(R * I);   // [R, I] each
  float* up = dec_.up.get(R * I);
  float* proj = dec_.proj.get(R * H);   // [R, H] the residual add's product
  float* cos = dec_.cos.get(R * half);  // [R, hd/2], each row at its own position
  float* sin = dec_.sin.get(R * half);
  std::vector<int64_t> keys(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    cpu::rope_llama_table(inv_freq_.data(), static_cast<int>(hd), pos[r], 1, cos + r * half, sin + r * half);
    keys[r] = pos[r] + 1;
  }
  cpu::PagedQueries pq{q, qw, attn, qw, R, static_cast<int>(nh), 1.0f / std::sqrt(static_cast<float>(hd)), tables,
                       keys.data()};
  // fn(first row, rows) for each group of at most decode_group() rows: the GEMV kernels' row count.
  const int64_t group = decode_group();
  auto groups = [&](const auto& fn) {
    for (int64_t r0 = 0; r0 < R; r0 += group) fn(r0, std::min(group, R - r0));
  };
  for (int l = 0; l < cfg_.num_layers; ++l) {
    Layer& L = layers_[l];
    const cpu::PagedKv kv = layer_kv(l);
    {
      OpTimer t("decoder.norm+matmul_qkv");
      const cpu::RowNorm norm{cpu::RowNorm::kRmsNorm, L.input_norm.data(), nullptr, cfg_.rms_norm_eps};
      groups([&](int64_t r0, int64_t m) {
        const cpu::MatmulOut outs[3] = {{&L.q, nullptr, q + r0 * qw}, {&L.k, nullptr, k + r0 * kvw},
                                        {&L.v, nullptr, v + r0 * kvw}};
        cpu::matmul_group(x + r0 * H, m, outs, 3, pool_, precision_, norm, h + r0 * H);
      });
    }
    {
      OpTimer t("decoder.rope+attention");
      for (int64_t r = 0; r < R; ++r) {
        cpu::rope_rotate_half(q + r * qw, 1, static_cast<int>(nh), static_cast<int>(hd), cos + r * half, sin + r * half);
        cpu::rope_rotate_half(k + r * kvw, 1, static_cast<int>(nkv), static_cast<int>(hd), cos + r * half, sin + r * half);
        cpu::store_kv_rows(k + r * kvw, v + r * kvw, 1, pos[r], tables[r], kv, cache_->base());
      }
      cpu::attention_paged(pq, kv, pool_);
    }
    {
      OpTimer t("decoder.matmul_o+residual");
      groups([&](int64_t r0, int64_t m) {
        cpu::matmul(attn + r0 * qw, m, L.o, nullptr, x + r0 * H, pool_, precision_, cpu::Epilogue::kAccumulate, nullptr,
                    proj + r0 * H);
      });
    }
    {
      OpTimer t("decoder.mlp");
      const cpu::RowNorm post_norm{cpu::RowNorm::kRmsNorm, L.post_norm.data(), nullptr, cfg_.rms_norm_eps};
      groups([&](int64_t r0, int64_t m) {
        const cpu::MatmulOut outs[2] = {{&L.gate, nullptr, gate + r0 * I}, {&L.up, nullptr, up + r0 * I}};
        cpu::matmul_group(x + r0 * H, m, outs, 2, pool_, precision_, post_norm, h + r0 * H);
        cpu::silu_mul(gate + r0 * I, up + r0 * I, gate + r0 * I, m * I, pool_);
        cpu::matmul(gate + r0 * I, m, L.down, nullptr, x + r0 * H, pool_, precision_, cpu::Epilogue::kAccumulate, nullptr,
                    proj + r0 * H);
      });
    }
  }
  cpu::rms_norm(x, final_norm_.data(), h, R, H, cfg_.rms_norm_eps);
  groups([&](int64_t r0, int64_t m) {
    cpu::matmul(h + r0 * H, m, lm_head_, nullptr, logits_out + r0 * V, pool_, precision_);
  });
}

}  // namespace plm
