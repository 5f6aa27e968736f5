// Online-softmax attention: each (query row, head) streams over the keys once, keeping a running max,
// sum and output, so no [Tq, Tk] score matrix is ever stored (ViT tiles of 1025 tokens, 10k prefills).
#include "cpu/attention.h"

#include <cstdint>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "cpu/cpu_features.h"

namespace plm::cpu::kernels {
bool attention_avx512(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                      ThreadPool* pool);
bool attention_amx_bf16(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                        ThreadPool* pool);
bool attention_avx512bf16(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                          ThreadPool* pool);
bool attention_avx2(const float* q, const float* k, const float* v, float* out, const AttentionShape& s,
                    ThreadPool* pool);
}  // namespace plm::cpu::kernels

namespace plm::cpu {

void attention(const float* q, const float* k, const float* v, float* out, const AttentionShape& s, ThreadPool* pool,
               Precision precision) {
#if defined(__x86_64__) || defined(_M_X64)
  if (attention_tiles_available(precision, s)) {
    if (cpu_features().amx_bf16 ? kernels::attention_amx_bf16(q, k, v, out, s, pool)
                                : kernels::attention_avx512bf16(q, k, v, out, s, pool))
      return;
  }
#endif
  if (s.out_tiles)
    throw Error(ErrorCode::kInternal, "attention: a tile-ordered output needs a bf16 attention kernel (check attention_tiles_available)");
  attention(q, k, v, out, s, pool);
}

bool attention_tiles_available(Precision precision, const AttentionShape& s) {
#if defined(__x86_64__) || defined(_M_X64)
  // The coverage of attention_amx_bf16 and attention_avx512bf16 (they check the shape again themselves);
  // attention() dispatches on this too. Both need AVX512-BF16 and the rest of AVX-512; AMX picks the first.
  static const CpuFeatures& f = cpu_features();
  static const bool bf16 = f.avx512_bf16 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  return precision == Precision::kBF16 && bf16 && s.head_dim % 32 == 0 && s.head_dim <= 256 && s.q_len >= 16 &&
         s.kv_len > 0;
#else
  (void)precision, (void)s;
  return false;
#endif
}

const char* attention_kernel_name(Precision precision) {
  AttentionShape s;
  s.q_len = s.kv_len = 64;
  s.heads = s.kv_heads = 1;
  s.head_dim = 64;
  if (attention_tiles_available(precision, s))
    return cpu_features().amx_bf16 ? "amx-bf16 (flash, tiles)" : "avx512-bf16 (flash, vdpbf16ps)";
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_features().avx512f && cpu_features().avx512dq) return "avx512 (flash, f32)";
  if (cpu_features().avx2 && cpu_features().fma) return "avx2 (flash, f32)";
#endif
  return "portable (f32)";
}

void attention(const float* q, const float* k, const float* v, float* out, const AttentionShape& s, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = cpu_features().avx512f && cpu_features().avx512dq;
  static const bool avx2 = cpu_features().avx2 && cpu_features().fma;
  if (avx512 && kernels::attention_avx512(q, k, v, out, s, pool)) return;
  if (avx2 && kernels::attention_avx2(q, k, v, out, s, pool)) return;
#endif
  const int hd = s.head_dim, group = s.heads / s.kv_heads;
  constexpr int64_t kKeyBlock = 64;
  auto task = [&](int64_t idx) {
    const int64_t i = idx / s.heads;
    const int h = static_cast<int>(idx % s.heads), kvh = h / group;
    const float* qi = q + i * s.q_stride + static_cast<int64_t>(h) * hd;
    float* oi = out + i * s.out_row_stride() + static_cast<int64_t>(h) * hd;
    const int64_t keys = s.causal ? std::min(s.kv_len, s.q_offset + i + 1) : s.kv_len;
    thread_local std::vector<float> acc, scores;
    acc.assign(hd, 0.f);
    scores.resize(kKeyBlock);
    float running_max = -INFINITY, running_sum = 0.f;
    for (int64_t j0 = 0; j0 < keys; j0 += kKeyBlock) {
      const int64_t j1 = std::min(keys, j0 + kKeyBlock);
      float block_max = -INFINITY;
      for (int64_t j = j0; j < j1; ++j) {
        const float* kj = k + j * s.kv_stride + static_cast<int64_t>(kvh) * hd;
        float d = 0.f;
        for (int c = 0; c < hd; ++c) d += qi[c] * kj[c];
        d *= s.scale;
        scores[j - j0] = d;
        block_max = std::max(block_max, d);
      }
      const float new_max = std::max(running_max, block_max);
      const float correction = std::exp(running_max - new_max);
      running_sum *= correction;
      for (int c = 0; c < hd; ++c) acc[c] *= correction;
      for (int64_t j = j0; j < j1; ++j) {
        const float p = std::exp(scores[j - j0] - new_max);
        running_sum += p;
        const float* vj = v + j * s.kv_stride + static_cast<int64_t>(kvh) * hd;
        for (int c = 0; c < hd; ++c) acc[c] += p * vj[c];
      }
      running_max = new_max;
    }
    const float inv = 1.0f / running_sum;
    for (int c = 0; c < hd; ++c) oi[c] = acc[c] * inv;
  };
  const int64_t tasks = s.q_len * s.heads;
  parallel_for(pool, tasks, 4, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) task(t);
  });
}

}  // namespace plm::cpu
