// Elementwise / data-movement kernels (memory-bound, grid-stride loops).
#include <cstdint>
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/elementwise.cuh"

namespace plm::cuda {

namespace {

unsigned grid_for(int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, 256), 1 << 20))); }

#define GRID_LOOP(i, n) for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void k_swiglu(const bf16* __restrict__ gu, int64_t M, int64_t I, bf16* __restrict__ out) {
  GRID_LOOP(idx, M * I) {
    const int64_t r = idx / I, c = idx % I;
    const float g = bf2f(gu[r * 2 * I + c]), u = bf2f(gu[r * 2 * I + I + c]);
    out[idx] = f2bf(silu_f(g) * u);
  }
}

__global__ void k_gelu(bf16* x, int64_t n) {
  GRID_LOOP(i, n) x[i] = f2bf(gelu_erf_f(bf2f(x[i])));
}

__global__ void k_im2col(const float* __restrict__ px, int64_t tiles, int S, int ps, int kpad, bf16* __restrict__ out) {
  const int G = S / ps;
  const int64_t P = int64_t(G) * G;
  const int kreal = 3 * ps * ps;
  GRID_LOOP(idx, tiles * P * kpad) {
    const int64_t row = idx / kpad;
    const int col = int(idx % kpad);
    float v = 0.f;
    if (col < kreal) {
      const int64_t tile = row / P;
      const int p = int(row % P), py = p / G, pxx = p % G;
      const int c = col / (ps * ps), rem = col % (ps * ps), ky = rem / ps, kx = rem % ps;
      v = px[((tile * 3 + c) * S + (py * ps + ky)) * int64_t(S) + pxx * ps + kx];
    }
    out[idx] = f2bf(v);
  }
}

__global__ void k_vision_assemble(const float* __restrict__ patch, const float* __restrict__ cls,
                                  const float* __restrict__ pos, int64_t tiles, int64_t P, int64_t C,
                                  float* __restrict__ out) {
  const int prefix = cls ? 1 : 0;
  const int64_t N = P + prefix;
  GRID_LOOP(idx, tiles * N * C) {
    const int64_t c = idx % C, t = (idx / C) % N, tile = idx / (C * N);
    const float base = t < prefix ? cls[c] : patch[(tile * P + (t - prefix)) * C + c];
    out[idx] = base + pos[t * C + c];
  }
}

__global__ void k_drop_prefix(const float* __restrict__ x, int64_t tiles, int64_t N, int prefix, int64_t C,
                              bf16* __restrict__ out) {
  const int64_t P = N - prefix;
  GRID_LOOP(idx, tiles * P * C) {
    const int64_t c = idx % C, p = (idx / C) % P, tile = idx / (C * P);
    out[idx] = f2bf(x[(tile * N + prefix + p) * C + c]);
  }
}

__global__ void k_avg_pool(const float* __restrict__ f, int64_t tiles, int G, int r, int64_t D, float* __restrict__ out) {
  const int Go = G / r;
  const int64_t Po = int64_t(Go) * Go;
  const float inv = 1.f / float(r * r);
  GRID_LOOP(idx, tiles * Po * D) {
    const int64_t d = idx % D, o = (idx / D) % Po, tile = idx / (D * Po);
    const int oy = int(o / Go), ox = int(o % Go);
    float s = 0.f;
    for (int dy = 0; dy < r; ++dy)
      for (int dx = 0; dx < r; ++dx) s += f[(tile * G * G + int64_t(oy * r + dy) * G + (ox * r + dx)) * D + d];
    out[idx] = s * inv;
  }
}

__global__ void k_embed_rows(const int32_t* __restrict__ ids, const int32_t* __restrict__ fidx,
                             const bf16* __restrict__ embed, const float* __restrict__ feats, int64_t n, int64_t H,
                             float* __restrict__ out) {
  GRID_LOOP(idx, n * H) {
    const int64_t r = idx / H, c = idx % H;
    const int f = fidx ? fidx[r] : -1;
    out[idx] = f >= 0 ? feats[int64_t(f) * H + c] : bf2f(embed[int64_t(ids[r]) * H + c]);
  }
}

}  // namespace

void swiglu(const uint16_t* gu, int64_t M, int64_t I, uint16_t* out, void* stream) {
  if (M * I <= 0) return;
  k_swiglu<<<grid_for(M * I), 256, 0, as_stream(stream)>>>(reinterpret_cast<const bf16*>(gu), M, I,
                                                           reinterpret_cast<bf16*>(out));
  PLM_CU_LAUNCH_CHECK();
}
void gelu_inplace(uint16_t* x, int64_t n, void* stream) {
  if (n <= 0) return;
  k_gelu<<<grid_for(n), 256, 0, as_stream(stream)>>>(reinterpret_cast<bf16*>(x), n);
  PLM_CU_LAUNCH_CHECK();
}
void im2col_patches(const float* pixels, int64_t tiles, int S, int ps, int kpad, uint16_t* out, void* stream) {
  const int64_t n = tiles * int64_t(S / ps) * (S / ps) * kpad;
  if (n <= 0) return;
  k_im2col<<<grid_for(n), 256, 0, as_stream(stream)>>>(pixels, tiles, S, ps, kpad, reinterpret_cast<bf16*>(out));
  PLM_CU_LAUNCH_CHECK();
}
void vision_assemble(const float* patch, const float* cls, const float* pos, int64_t tiles, int64_t P, int64_t C,
                     float* out, void* stream) {
  const int64_t n = tiles * (P + (cls ? 1 : 0)) * C;
  if (n <= 0) return;
  k_vision_assemble<<<grid_for(n), 256, 0, as_stream(stream)>>>(patch, cls, pos, tiles, P, C, out);
  PLM_CU_LAUNCH_CHECK();
}
void drop_prefix_bf16(const float* x, int64_t tiles, int64_t N, int prefix, int64_t C, uint16_t* out, void* stream) {
  const int64_t n = tiles * (N - prefix) * C;
  if (n <= 0) return;
  k_drop_prefix<<<grid_for(n), 256, 0, as_stream(stream)>>>(x, tiles, N, prefix, C, reinterpret_cast<bf16*>(out));
  PLM_CU_LAUNCH_CHECK();
}
void avg_pool(const float* f, int64_t tiles, int G, int r, int64_t D, float* out, void* stream) {
  const int64_t n = tiles * int64_t(G / r) * (G / r) * D;
  if (n <= 0) return;
  k_avg_pool<<<grid_for(n), 256, 0, as_stream(stream)>>>(f, tiles, G, r, D, out);
  PLM_CU_LAUNCH_CHECK();
}
void embed_rows(const int32_t* ids, const int32_t* feat_idx, const uint16_t* embed, const float* feats, int64_t n,
                int64_t H, float* out, void* stream) {
  if (n * H <= 0) return;
  k_embed_rows<<<grid_for(n * H), 256, 0, as_stream(stream)>>>(ids, feat_idx, reinterpret_cast<const bf16*>(embed),
                                                               feats, n, H, out);
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
