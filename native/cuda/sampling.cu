// Sampling: greedy argmax in two passes (128 blocks, then one), or temperature + top-k + top-p + min-p
// in one 1024-thread block: exact thresholds found by bisection over the ordered bit patterns of the
// logits (32 passes over V; about 0.1 ms at V = 128k, only paid when sampling), then an inverse-CDF draw
// with a Philox4x32-10 number keyed by (seed, step). Kept set = {l >= max(kth value, top-p cut, min-p cut)}:
// transformers' order (temperature, top-k, top-p on the top-k set, min-p); ties at a cut are all kept.
// The same definition as the CPU sampler (model/sampler.cpp): the same (seed, step) draws the same token from
// the same logits, up to the rounding of the sums that decide a cut or the draw.
#include <cstdint>
#include <cfloat>

#include "core/philox.h"
#include "cuda/common.cuh"
#include "cuda/sampling.cuh"

namespace plm::cuda {

namespace {

// One definition with the CPU sampler (core/philox.h, model/sampler.cpp).
__device__ __forceinline__ uint32_t philox(uint64_t seed, uint64_t counter) { return philox4x32_10(seed, counter); }

__device__ __forceinline__ uint32_t okey(float f) { return float_order_key(__float_as_uint(f)); }

struct ArgPair {
  float v;
  int32_t i;
};
__device__ __forceinline__ ArgPair better(ArgPair a, ArgPair b) {  // larger value; first index on ties
  if (b.v > a.v || (b.v == a.v && b.i < a.i)) return b;
  return a;
}
__device__ ArgPair block_argmax(ArgPair p, ArgPair* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    ArgPair q{__shfl_xor_sync(0xffffffffu, p.v, o), __shfl_xor_sync(0xffffffffu, p.i, o)};
    p = better(p, q);
  }
  __syncthreads();
  if (lane == 0) red[warp] = p;
  __syncthreads();
  p = lane < nw ? red[lane] : ArgPair{-INFINITY, INT32_MAX};
  for (int o = 16; o > 0; o >>= 1) {
    ArgPair q{__shfl_xor_sync(0xffffffffu, p.v, o), __shfl_xor_sync(0xffffffffu, p.i, o)};
    p = better(p, q);
  }
  return p;
}

__global__ void __launch_bounds__(256) k_argmax_partial(const float* __restrict__ x, int64_t V, ArgPair* part) {
  __shared__ ArgPair red[32];
  ArgPair p{-INFINITY, INT32_MAX};
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < V; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    if (p.i == INT32_MAX || v > p.v) p = ArgPair{v, int32_t(i)};  // indices ascend: first max kept
  }
  p = block_argmax(p, red);
  if (threadIdx.x == 0) part[blockIdx.x] = p;
}

__device__ float block_sum_f(float v, float* red) { return block_sum(v, red); }

__global__ void __launch_bounds__(1024) k_sample_final(const float* __restrict__ x, int64_t V,
                                                       const SampleParams* __restrict__ prm,
                                                       const ArgPair* __restrict__ part, int32_t* out) {
  __shared__ ArgPair ared[32];
  __shared__ float red[32];
  __shared__ float chunk_sum[1024];
  const int tid = threadIdx.x;
  ArgPair best = tid < kArgmaxBlocks ? part[tid] : ArgPair{-INFINITY, INT32_MAX};
  best = block_argmax(best, ared);
  const SampleParams sp = *prm;
  if (!(sp.temperature > 0.f) || best.i == INT32_MAX) {
    if (tid == 0) out[0] = best.i == INT32_MAX ? 0 : best.i;
    return;
  }
  const float mx = best.v, invT = 1.f / sp.temperature;
  auto count_ge = [&](uint32_t K) {
    float c = 0.f;
    for (int64_t i = tid; i < V; i += blockDim.x) c += okey(x[i]) >= K ? 1.f : 0.f;
    return block_sum_f(c, red);
  };
  auto mass_gt = [&](uint32_t lo_key, uint32_t K) {  // sum exp over kept (>= lo_key) with key > K
    float m = 0.f;
    for (int64_t i = tid; i < V; i += blockDim.x) {
      const uint32_t k = okey(x[i]);
      if (k >= lo_key && k > K) m += expf((x[i] - mx) * invT);
    }
    return block_sum_f(m, red);
  };
  uint32_t thr = 0;  // keep keys >= thr
  if (sp.top_k > 0 && sp.top_k < V) {
    // largest K with count(key >= K) >= top_k  == key of the k-th largest value
    uint64_t lo = 0, hi = 0xFFFFFFFFull;  // 64-bit: hi - lo + 1 must not wrap
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo + 1) / 2;
      if (count_ge(uint32_t(mid)) >= float(sp.top_k)) lo = mid; else hi = mid - 1;
    }
    thr = uint32_t(lo);
  }
  if (sp.top_p < 1.f && sp.top_p > 0.f) {
    const float Z = mass_gt(thr, 0u) + 0.f;  // keys > 0 covers every non -NaN value
    const float target = sp.top_p * Z;
    // smallest K with mass(key > K) < top_p * Z; tokens with key >= K are kept
    uint32_t lo = 0, hi = okey(mx);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo) / 2;
      if (mass_gt(thr, mid) < target) hi = mid; else lo = mid + 1;
    }
    thr = max(thr, lo);
  }
  if (sp.min_p > 0.f) {
    const float cut = mx + sp.temperature * logf(sp.min_p);  // p_i / p_max >= min_p
    thr = max(thr, okey(cut));
    thr = min(thr, okey(mx));  // the best token always survives
  }
  // inverse CDF over kept tokens in index order, each thread owning a contiguous chunk
  const int64_t cs = (V + blockDim.x - 1) / blockDim.x;
  const int64_t b0 = tid * cs, b1 = min(V, b0 + cs);
  float s = 0.f;
  for (int64_t i = b0; i < b1; ++i)
    if (okey(x[i]) >= thr) s += expf((x[i] - mx) * invT);
  chunk_sum[tid] = s;
  __syncthreads();
  if (tid == 0) {
    float tot = 0.f;
    for (int i = 0; i < int(blockDim.x); ++i) {
      const float c = chunk_sum[i];
      chunk_sum[i] = tot;  // exclusive prefix
      tot += c;
    }
    red[0] = tot;
  }
  __syncthreads();
  const float total = red[0];
  const float u = float(philox(sp.seed, sp.step) >> 8) * (1.f / 16777216.f);
  const float target = u * total;
  const float before = chunk_sum[tid];
  const float after = tid + 1 < int(blockDim.x) ? chunk_sum[tid + 1] : total;
  // Default first: when u * total rounds up to total, only the last thread claims the draw, and its chunk
  // may hold no kept token (V = 128256 leaves the last chunk empty): it must not leave a stale id in out.
  if (tid == 0) out[0] = best.i;
  __syncthreads();
  if (target >= before && (target < after || tid == int(blockDim.x) - 1)) {
    float acc = before;
    int32_t pick = -1, last = -1;
    for (int64_t i = b0; i < b1; ++i) {
      if (okey(x[i]) < thr) continue;
      last = int32_t(i);
      acc += expf((x[i] - mx) * invT);
      if (acc > target) {
        pick = int32_t(i);
        break;
      }
    }
    if (pick < 0) pick = last;
    if (pick >= 0) out[0] = pick;
  }
}

}  // namespace

uint32_t philox_host(uint64_t seed, uint64_t counter) { return philox4x32_10(seed, counter); }

size_t sample_scratch_bytes() { return sizeof(ArgPair) * kArgmaxBlocks; }

void sample(const float* logits, int64_t V, const SampleParams* d_params, void* scratch, int32_t* d_out,
            void* stream) {
  cudaStream_t s = as_stream(stream);
  ArgPair* part = static_cast<ArgPair*>(scratch);
  k_argmax_partial<<<kArgmaxBlocks, 256, 0, s>>>(logits, V, part);
  PLM_CU_LAUNCH_CHECK();
  k_sample_final<<<1, 1024, 0, s>>>(logits, V, d_params, part, d_out);
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
