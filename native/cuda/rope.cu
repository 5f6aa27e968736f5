// RoPE kernels: elementwise, f32 math, one block per token row.
#include "cuda/common.cuh"
#include "cuda/rope.cuh"
#include <cstdint>

namespace plm::cuda {

namespace {

template <typename T>
__device__ __forceinline__ float ld_f(const T* p);
template <>
__device__ __forceinline__ float ld_f<float>(const float* p) { return *p; }
template <>
__device__ __forceinline__ float ld_f<bf16>(const bf16* p) { return bf2f(*p); }

// One token row. Pairs (i, i + hd/2) of every q and k head, then v.
template <typename T>
__device__ void rope_row(const T* row, float pos, int nh, int nkv, int hd, const float* __restrict__ inv_freq,
                         bf16* q_inplace, float* q_out, bf16* k_dst, bf16* v_dst) {
  const int half = hd / 2;
  const int pairs = (nh + nkv) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;
    const float ang = pos * inv_freq[i];
    const float c = cosf(ang), s = sinf(ang);
    const int col = head * hd + i;
    const float x0 = ld_f(row + col), x1 = ld_f(row + col + half);
    const float y0 = x0 * c - x1 * s, y1 = x1 * c + x0 * s;
    if (head < nh) {
      if (q_inplace) {
        q_inplace[col] = f2bf(y0);
        q_inplace[col + half] = f2bf(y1);
      }
      if (q_out) {
        q_out[col] = y0;
        q_out[col + half] = y1;
      }
    } else {
      const int kc = col - nh * hd;
      k_dst[kc] = f2bf(y0);
      k_dst[kc + half] = f2bf(y1);
    }
  }
  const int vn = nkv * hd;
  for (int j = threadIdx.x; j < vn; j += blockDim.x) v_dst[j] = f2bf(ld_f(row + (nh + nkv) * hd + j));
}

__global__ void k_rope_prefill(bf16* qkv, int64_t ld, int nh, int nkv, int hd, int64_t pos0,
                               const float* __restrict__ inv_freq, bf16* kc, bf16* vc) {
  const int64_t t = blockIdx.x;
  bf16* row = qkv + t * ld;
  const int64_t off = (pos0 + t) * int64_t(nkv) * hd;
  rope_row<bf16>(row, float(pos0 + t), nh, nkv, hd, inv_freq, row, nullptr, kc + off, vc + off);
}

__global__ void k_rope_decode(const float* __restrict__ qkv, const int32_t* __restrict__ d_pos, int nh, int nkv,
                              int hd, const float* __restrict__ inv_freq, float* q_out, bf16* kc, bf16* vc) {
  const int pos = *d_pos;
  const int64_t off = int64_t(pos) * nkv * hd;
  rope_row<float>(qkv, float(pos), nh, nkv, hd, inv_freq, nullptr, q_out, kc + off, vc + off);
}

__global__ void k_rope_2d(bf16* qkv, int64_t ld, int64_t N, int prefix, int heads, int hd,
                          const float* __restrict__ cs, const float* __restrict__ sn) {
  const int64_t row = blockIdx.x;  // tile * N + t
  const int64_t t = row % N;
  if (t < prefix) return;
  const int64_t p = t - prefix;
  const int half = hd / 2, C = heads * hd;
  bf16* r = qkv + row * ld;
  for (int idx = threadIdx.x; idx < 2 * heads * half; idx += blockDim.x) {
    const int which = idx / (heads * half);  // 0: q, 1: k
    const int rem = idx % (heads * half);
    const int h = rem / half, pr = rem % half;
    const float c = cs[p * half + pr], s = sn[p * half + pr];
    bf16* e = r + which * C + h * hd + 2 * pr;
    const float x0 = bf2f(e[0]), x1 = bf2f(e[1]);
    e[0] = f2bf(x0 * c - x1 * s);
    e[1] = f2bf(x1 * c + x0 * s);
  }
}

}  // namespace

void rope_llama_prefill(uint16_t* qkv, int64_t ld, int64_t M, int nh, int nkv, int hd, int64_t pos0,
                        const float* inv_freq, uint16_t* k_cache, uint16_t* v_cache, void* stream) {
  if (M <= 0) return;
  k_rope_prefill<<<unsigned(M), 256, 0, as_stream(stream)>>>(reinterpret_cast<bf16*>(qkv), ld, nh, nkv, hd, pos0,
                                                             inv_freq, reinterpret_cast<bf16*>(k_cache),
                                                             reinterpret_cast<bf16*>(v_cache));
  PLM_CU_LAUNCH_CHECK();
}

void rope_llama_decode(const float* qkv, const int32_t* d_pos, int nh, int nkv, int hd, const float* inv_freq,
                       float* q_out, uint16_t* k_cache, uint16_t* v_cache, void* stream) {
  k_rope_decode<<<1, 512, 0, as_stream(stream)>>>(qkv, d_pos, nh, nkv, hd, inv_freq, q_out,
                                                  reinterpret_cast<bf16*>(k_cache), reinterpret_cast<bf16*>(v_cache));
  PLM_CU_LAUNCH_CHECK();
}

void rope_2d(uint16_t* qkv, int64_t ld, int64_t tiles, int64_t N, int prefix, int heads, int hd, const float* cos,
             const float* sin, void* stream) {
  if (tiles * N <= 0) return;
  k_rope_2d<<<unsigned(tiles * N), 256, 0, as_stream(stream)>>>(reinterpret_cast<bf16*>(qkv), ld, N, prefix, heads,
                                                                hd, cos, sin);
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
