// Flash attention (prefill, ViT) and split-K decode attention. See attention.cuh.
//
// flash: 64 query rows per block (4 warps x 16 rows), 64 keys per step, K/V double-buffered with cp.async,
// S = Q K^T and O += P V on mma.sync m16n8k16 (bf16 in, f32 accumulate), P reused from the S accumulators
// as the A operand (FA2 register layout). Rows padded by 16 bytes: conflict-free ldmatrix for every head dim.
// Expected: ~35-50% of the mma.sync peak (FA2-class without warp specialization).
// decode: one warp per (head, split); lane j scores key j of each group of 32, then lanes own head dims
// for P V. A tiny combine kernel merges the splits. The KV read is a few MB: latency-, not bandwidth-bound.
#include <cstdint>
#include <cfloat>

#include "cuda/attention.cuh"
#include "cuda/common.cuh"
#include "cuda/ptx.cuh"

namespace plm::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

struct FlashDev {
  const bf16 *q, *k, *v;
  bf16* o;
  int64_t q_stride, kv_stride, o_stride, q_bs, kv_bs, o_bs;
  int q_len, kv_len, heads, kv_heads;
  float scale_log2;
  int causal, q_offset;
};

constexpr int FBQ = 64, FBK = 64;

template <int HD>
__global__ void __launch_bounds__(128) k_flash(FlashDev p) {
  constexpr int LD = HD + 8;  // smem row (elements)
  constexpr int KSTEPS = HD / 16, DT = HD / 8, CH = HD / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);  // [FBQ][LD]
  bf16* sK = sQ + FBQ * LD;                      // [2][FBK][LD]
  bf16* sV = sK + 2 * FBK * LD;                  // [2][FBK][LD]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qb = blockIdx.x * FBQ, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (p.heads / p.kv_heads);
  const bf16* Q = p.q + b * p.q_bs + int64_t(h) * HD;
  const bf16* K = p.k + b * p.kv_bs + int64_t(kvh) * HD;
  const bf16* V = p.v + b * p.kv_bs + int64_t(kvh) * HD;
  bf16* O = p.o + b * p.o_bs + int64_t(h) * HD;

  const int kv_end = p.causal ? min(p.kv_len, p.q_offset + qb + FBQ) : p.kv_len;
  const int ntiles = (kv_end + FBK - 1) / FBK;

  for (int c = tid; c < FBQ * CH; c += 128) {
    const int r = c / CH, cc = (c % CH) * 8;
    const bool ok = qb + r < p.q_len;
    cp_async16(sQ + r * LD + cc, ok ? Q + int64_t(qb + r) * p.q_stride + cc : Q, ok ? 16 : 0);
  }
  auto load_kv = [&](int buf, int tile) {
    const int k0 = tile * FBK;
    for (int c = tid; c < FBK * CH; c += 128) {
      const int r = c / CH, cc = (c % CH) * 8;
      const bool ok = k0 + r < p.kv_len;
      const int64_t off = int64_t(k0 + r) * p.kv_stride + cc;
      cp_async16(sK + (buf * FBK + r) * LD + cc, ok ? K + off : K, ok ? 16 : 0);
      cp_async16(sV + (buf * FBK + r) * LD + cc, ok ? V + off : V, ok ? 16 : 0);
    }
  };
  if (ntiles > 0) load_kv(0, 0);
  cp_async_commit();

  const int g = lane >> 2, t4 = lane & 3;
  float acc[DT][4];
#pragma unroll
  for (int i = 0; i < DT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  uint32_t qf[KSTEPS][4];

  for (int j = 0; j < ntiles; ++j) {
    if (j + 1 < ntiles) {
      load_kv((j + 1) & 1, j + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < KSTEPS; ++kk) ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
    }
    const bf16* kb = sK + (j & 1) * FBK * LD;
    const bf16* vb = sV + (j & 1) * FBK * LD;
    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, kb + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_bf16(s[2 * np], qf[kk], r[0], r[1]);
        mma_bf16(s[2 * np + 1], qf[kk], r[2], r[3]);
      }
    }
    // scale, mask, online softmax (rows g and g+8 of this warp's 16)
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = j * FBK + nt * 8 + t4 * 2 + (e & 1);
        const int qrow = qb + warp * 16 + g + (e >> 1) * 8;
        float v = s[nt][e] * p.scale_log2;
        if (key >= p.kv_len || (p.causal && key > p.q_offset + qrow)) v = -INFINITY;
        s[nt][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;
      alpha[r] = exp2f(m_run[r] - m_use[r]);  // m_run = -inf -> 0
      m_run[r] = m_new;
      l_run[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(s[nt][e] - m_use[e >> 1]);
        s[nt][e] = pv;
        l_run[e >> 1] += pv;
      }
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      acc[dt][0] *= alpha[0];
      acc[dt][1] *= alpha[0];
      acc[dt][2] *= alpha[1];
      acc[dt][3] *= alpha[1];
    }
#pragma unroll
    for (int kj = 0; kj < 4; ++kj) {
      uint32_t a[4];
      a[0] = pack_bf16(s[2 * kj][0], s[2 * kj][1]);
      a[1] = pack_bf16(s[2 * kj][2], s[2 * kj][3]);
      a[2] = pack_bf16(s[2 * kj + 1][0], s[2 * kj + 1][1]);
      a[3] = pack_bf16(s[2 * kj + 1][2], s[2 * kj + 1][3]);
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, vb + (kj * 16 + (lane & 15)) * LD + dp * 16 + (lane >> 4) * 8);
        mma_bf16(acc[2 * dp], a, r[0], r[1]);
        mma_bf16(acc[2 * dp + 1], a, r[2], r[3]);
      }
    }
    __syncthreads();  // this buffer is refilled two steps later
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = qb + warp * 16 + g + hh * 8;
    if (row >= p.q_len) continue;
    const float inv = l_run[hh] > 0.f ? 1.f / l_run[hh] : 0.f;
    bf16* orow = O + int64_t(row) * p.o_stride;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(orow + dt * 8 + t4 * 2) =
          __floats2bfloat162_rn(acc[dt][hh * 2] * inv, acc[dt][hh * 2 + 1] * inv);
    }
  }
}

template <int HD>
void launch_flash(const FlashDev& d, int batch, int q_len, int heads, cudaStream_t s) {
  const size_t smem = size_t(FBQ + 4 * FBK) * (HD + 8) * sizeof(bf16);
  static bool attr[64] = {};  // per device
  int dev = 0;
  PLM_CU_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64 || !attr[dev]) {
    PLM_CU_CHECK(cudaFuncSetAttribute(k_flash<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    if (dev >= 0 && dev < 64) attr[dev] = true;
  }
  dim3 grid(unsigned(ceil_div(q_len, FBQ)), unsigned(heads), unsigned(batch));
  k_flash<HD><<<grid, 128, smem, s>>>(d);
  PLM_CU_LAUNCH_CHECK();
}


// Generic attention for any head_dim <= 256 (one warp per query row and head; used for head dims the
// tensor-core kernel does not cover, e.g. 8 or 24 in the tiny test models). Same layout as k_flash.
__global__ void __launch_bounds__(32) k_attn_generic(FlashDev p, int hd) {
  __shared__ float sq[256];
  const int row = blockIdx.x, h = blockIdx.y, b = blockIdx.z, lane = threadIdx.x;
  const int kvh = h / (p.heads / p.kv_heads);
  const bf16* Q = p.q + b * p.q_bs + int64_t(row) * p.q_stride + int64_t(h) * hd;
  const bf16* K = p.k + b * p.kv_bs + int64_t(kvh) * hd;
  const bf16* V = p.v + b * p.kv_bs + int64_t(kvh) * hd;
  bf16* O = p.o + b * p.o_bs + int64_t(row) * p.o_stride + int64_t(h) * hd;
  for (int d = lane; d < hd; d += 32) sq[d] = bf2f(Q[d]) * p.scale_log2;
  __syncwarp();
  const int end = p.causal ? min(p.kv_len, p.q_offset + row + 1) : p.kv_len;
  float m = -INFINITY, l = 0.f, acc[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) acc[i] = 0.f;
  for (int base = 0; base < end; base += 32) {
    const int key = base + lane;
    float sc = -INFINITY;
    if (key < end) {
      const bf16* kr = K + int64_t(key) * p.kv_stride;
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot = fmaf(bf2f(kr[d]), sq[d], dot);
      sc = dot;
    }
    const float m_new = fmaxf(m, warp_max(sc));
    const float alpha = exp2f(m - m_new);
    const float pv = key < end ? exp2f(sc - m_new) : 0.f;
    l = l * alpha + warp_sum(pv);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] *= alpha;
    const int nk = min(32, end - base);
    for (int kk = 0; kk < nk; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, pv, kk);
      const bf16* vr = V + int64_t(base + kk) * p.kv_stride;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) acc[i] = fmaf(pk, bf2f(vr[d]), acc[i]);
      }
    }
    m = m_new;
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) O[d] = f2bf(acc[i] * inv);
  }
}

// ---- decode ----
constexpr int kMaxDPL = 8;  // head_dim <= 256

__global__ void __launch_bounds__(32) k_decode_split(const float* __restrict__ q, const bf16* __restrict__ kc,
                                                     const bf16* __restrict__ vc, const int32_t* __restrict__ d_pos,
                                                     int heads, int kv_heads, int hd, float scale_log2,
                                                     float* __restrict__ partial) {
  __shared__ float sq[256];
  const int h = blockIdx.x, sp = blockIdx.y, lane = threadIdx.x;
  const int kvh = h / (heads / kv_heads);
  const int len = *d_pos + 1;
  const int chunk = (len + kDecodeSplits - 1) / kDecodeSplits;
  const int start = sp * chunk, end = min(len, start + chunk);
  for (int d = lane; d < hd; d += 32) sq[d] = q[h * hd + d] * scale_log2;
  __syncwarp();
  const int64_t row_stride = int64_t(kv_heads) * hd;
  float m = -INFINITY, l = 0.f, acc[kMaxDPL];
#pragma unroll
  for (int i = 0; i < kMaxDPL; ++i) acc[i] = 0.f;
  for (int base = start; base < end; base += 32) {
    const int key = base + lane;
    float sc = -INFINITY;
    if (key < end) {
      const uint4* kr = reinterpret_cast<const uint4*>(kc + key * row_stride + kvh * hd);
      float dot = 0.f;
      for (int c = 0; c < hd / 8; ++c) {
        Pack8 pk;
        pk.u = kr[c];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float2 f = __bfloat1622float2(pk.h[j]);
          dot = fmaf(f.x, sq[c * 8 + 2 * j], dot);
          dot = fmaf(f.y, sq[c * 8 + 2 * j + 1], dot);
        }
      }
      sc = dot;
    }
    const float m_new = fmaxf(m, warp_max(sc));  // finite: key `base` < end
    const float alpha = exp2f(m - m_new);
    const float pv = key < end ? exp2f(sc - m_new) : 0.f;
    l = l * alpha + warp_sum(pv);
#pragma unroll
    for (int i = 0; i < kMaxDPL; ++i) acc[i] *= alpha;
    const int nk = min(32, end - base);
    for (int kk = 0; kk < nk; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, pv, kk);
      const bf16* vr = vc + (base + kk) * row_stride + kvh * hd;
#pragma unroll
      for (int i = 0; i < kMaxDPL; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) acc[i] = fmaf(pk, bf2f(vr[d]), acc[i]);
      }
    }
    m = m_new;
  }
  float* out = partial + (int64_t(h) * kDecodeSplits + sp) * (hd + 2);
#pragma unroll
  for (int i = 0; i < kMaxDPL; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) out[d] = acc[i];
  }
  if (lane == 0) {
    out[hd] = m;  // -inf for an empty split
    out[hd + 1] = l;
  }
}

__global__ void k_decode_combine(const float* __restrict__ partial, int hd, bf16* __restrict__ out) {
  const int h = blockIdx.x;
  const float* base = partial + int64_t(h) * kDecodeSplits * (hd + 2);
  float M = -INFINITY;
  for (int s = 0; s < kDecodeSplits; ++s) M = fmaxf(M, base[s * (hd + 2) + hd]);
  float den = 0.f;
  for (int s = 0; s < kDecodeSplits; ++s) {
    const float ms = base[s * (hd + 2) + hd];
    if (ms != -INFINITY) den += exp2f(ms - M) * base[s * (hd + 2) + hd + 1];
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float num = 0.f;
    for (int s = 0; s < kDecodeSplits; ++s) {
      const float ms = base[s * (hd + 2) + hd];
      if (ms != -INFINITY) num += exp2f(ms - M) * base[s * (hd + 2) + d];
    }
    out[int64_t(h) * hd + d] = f2bf(den > 0.f ? num / den : 0.f);
  }
}

}  // namespace

bool flash_supported(int hd) { return hd == 16 || hd == 32 || hd == 48 || hd == 64 || hd == 96 || hd == 128; }

void flash_attention(const FlashParams& p, void* stream) {
  if (p.q_len <= 0 || p.batch <= 0) return;
  if (p.kv_heads <= 0 || p.heads % p.kv_heads != 0 || p.head_dim <= 0 || p.head_dim > 256)
    throw CudaError(3, "attention: unsupported heads/kv_heads/head_dim " + std::to_string(p.heads) + "/" +
                           std::to_string(p.kv_heads) + "/" + std::to_string(p.head_dim));
  FlashDev d{reinterpret_cast<const bf16*>(p.q), reinterpret_cast<const bf16*>(p.k), reinterpret_cast<const bf16*>(p.v),
             reinterpret_cast<bf16*>(p.o), p.q_stride, p.kv_stride, p.o_stride, p.q_batch_stride, p.kv_batch_stride,
             p.o_batch_stride, p.q_len, p.kv_len, p.heads, p.kv_heads, p.scale * kLog2e, p.causal ? 1 : 0,
             p.q_offset};
  cudaStream_t s = as_stream(stream);
  const bool aligned = p.q_stride % 8 == 0 && p.kv_stride % 8 == 0 && p.o_stride % 8 == 0 &&
                       p.q_batch_stride % 8 == 0 && p.kv_batch_stride % 8 == 0 && p.o_batch_stride % 8 == 0 &&
                       ((reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k) |
                         reinterpret_cast<uintptr_t>(p.v) | reinterpret_cast<uintptr_t>(p.o)) & 15) == 0;
  if (!flash_supported(p.head_dim) || !aligned) {
    k_attn_generic<<<dim3(unsigned(p.q_len), unsigned(p.heads), unsigned(p.batch)), 32, 0, s>>>(d, p.head_dim);
    PLM_CU_LAUNCH_CHECK();
    return;
  }
  switch (p.head_dim) {
    case 16: launch_flash<16>(d, p.batch, p.q_len, p.heads, s); break;
    case 32: launch_flash<32>(d, p.batch, p.q_len, p.heads, s); break;
    case 48: launch_flash<48>(d, p.batch, p.q_len, p.heads, s); break;
    case 64: launch_flash<64>(d, p.batch, p.q_len, p.heads, s); break;
    case 96: launch_flash<96>(d, p.batch, p.q_len, p.heads, s); break;
    default: launch_flash<128>(d, p.batch, p.q_len, p.heads, s); break;
  }
}

void decode_attention(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, const int32_t* d_pos,
                      int heads, int kv_heads, int hd, float scale, float* partial, uint16_t* out, void* stream) {
  if (hd % 8 != 0 || hd > 256 || heads % kv_heads != 0)
    throw CudaError(3, "decode_attention: head_dim must be a multiple of 8 and <= 256");
  cudaStream_t s = as_stream(stream);
  k_decode_split<<<dim3(heads, kDecodeSplits), 32, 0, s>>>(q, reinterpret_cast<const bf16*>(k_cache),
                                                           reinterpret_cast<const bf16*>(v_cache), d_pos, heads,
                                                           kv_heads, hd, scale * kLog2e, partial);
  PLM_CU_LAUNCH_CHECK();
  k_decode_combine<<<heads, 128, 0, s>>>(partial, hd, reinterpret_cast<bf16*>(out));
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
