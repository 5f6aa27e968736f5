// Tensor-core GEMM (mma.sync m16n8k16 bf16 -> f32, sm_80+), the kernel dispatch, and the decode GEMV.
// See gemm.cuh; the Hopper kernels are gemm_wgmma_tma.cu (default there) and gemm_wgmma.cu.
//
// gemm_bf16 (mma.sync): block tile 128x128x32, 8 warps (2 x 4, each 64x32 = 4x4 mma tiles), 4-stage cp.async
// pipeline, rows padded to 40 bf16 (80 B) so ldmatrix reads of 8 rows hit 8 distinct 16-byte bank groups.
// Measured on the H100: 190-250 TFLOP/s on the ViT/prefill shapes (the TMA + wgmma kernel: 320-480).
// gemv_bf16: one warp per output row, 16-byte loads of W, 4 loads in flight per lane: bandwidth-bound,
// measured 2.4-3.0 TB/s of weights on the H100 for the PLM-1B decode shapes.
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda/common.cuh"
#include "cuda/ptx.cuh"
#include "cuda/gemm.cuh"
#include "cuda/gemm_epilogue.cuh"

namespace plm::cuda {

namespace {

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4, PAD = 8, LDS = BK + PAD;  // LDS: smem row, elements
constexpr int GEMM_THREADS = 256;
constexpr size_t GEMM_SMEM = size_t(STAGES) * (BM + BN) * LDS * sizeof(bf16);  // 81920 B

// A [M, lda] bf16, W [N, ldw] bf16; grid (ceil(N/BN), ceil(M/BM)).
__global__ void __launch_bounds__(GEMM_THREADS, 2)
    k_gemm_bf16(const bf16* __restrict__ A, int64_t lda, const bf16* __restrict__ W, int64_t ldw, int64_t M,
                int64_t N, int64_t K, EpDev ep) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sA = reinterpret_cast<bf16*>(smem_raw);  // [STAGES][BM][LDS]
  bf16* sB = sA + STAGES * BM * LDS;             // [STAGES][BN][LDS]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;
  const int64_t bm = int64_t(blockIdx.y) * BM, bn = int64_t(blockIdx.x) * BN;
  const int ktiles = int((K + BK - 1) / BK);

  auto load_stage = [&](int stage, int kt) {
    const int64_t k0 = int64_t(kt) * BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = tid + i * GEMM_THREADS;  // 0..511
      const int r = c >> 2, kc = (c & 3) * 8;
      const int64_t gk = k0 + kc;
      {
        const int64_t gr = bm + r;
        const bool ok = gr < M && gk < K;
        const bf16* src = ok ? A + gr * lda + gk : A;
        cp_async16(sA + (stage * BM + r) * LDS + kc, src, ok ? 16 : 0);
      }
      {
        const int64_t gr = bn + r;
        const bool ok = gr < N && gk < K;
        const bf16* src = ok ? W + gr * ldw + gk : W;
        cp_async16(sB + (stage * BN + r) * LDS + kc, src, ok ? 16 : 0);
      }
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    {
      const int nk = kt + STAGES - 1;
      if (nk < ktiles) load_stage(nk % STAGES, nk);
      cp_async_commit();
    }
    const int stage = kt % STAGES;
    const bf16* a_base = sA + (stage * BM + warp_m * 64) * LDS;
    const bf16* b_base = sB + (stage * BN + warp_n * 32) * LDS;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[4][4], bfr[4][2];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
        ldmatrix_x4(af[mt], a_base + (mt * 16 + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, b_base + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk * 16 + ((lane >> 3) & 1) * 8);
        bfr[np * 2][0] = r[0];
        bfr[np * 2][1] = r[1];
        bfr[np * 2 + 1][0] = r[2];
        bfr[np * 2 + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma_bf16(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
    }
  }
  cp_async_wait<0>();

  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int64_t col = bn + warp_n * 32 + nt * 8 + t4 * 2;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = bm + warp_m * 64 + mt * 16 + g + h * 8;
        if (row >= M) continue;
        if (col < N) ep_store(ep, row, col, acc[mt][nt][h * 2]);
        if (col + 1 < N) ep_store(ep, row, col + 1, acc[mt][nt][h * 2 + 1]);
      }
    }
  }
}

// One thread per output; f32 accumulation in k order. Fallback and test reference.
__global__ void k_gemm_ref(const bf16* __restrict__ A, int64_t lda, const bf16* __restrict__ W, int64_t ldw,
                           int64_t M, int64_t N, int64_t K, EpDev ep) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t row = blockIdx.y;
  if (col >= N || row >= M) return;
  const bf16* a = A + row * lda;
  const bf16* w = W + col * ldw;
  float s = 0.f;
  for (int64_t k = 0; k < K; ++k) s += bf2f(a[k]) * bf2f(w[k]);
  ep_store(ep, row, col, s);
}

// ---- GEMV: y[N] = W[N,K] x[K] ----
// 8 warps per block, one (or two for swiglu) rows per warp. K % 8 == 0 and 16-byte aligned rows.
template <bool SWIGLU>
__global__ void __launch_bounds__(256) k_gemv_bf16(const bf16* __restrict__ x, const bf16* __restrict__ W, int64_t N,
                                                   int64_t K, EpDev ep) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (row >= N) return;
  const int64_t chunks = K >> 3;
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
  const uint4* w0 = reinterpret_cast<const uint4*>(W + row * K);
  const uint4* w1 = reinterpret_cast<const uint4*>(W + (row + (SWIGLU ? N : 0)) * K);
  float s0 = 0.f, s1 = 0.f;
  int64_t c = lane;
  // 4 independent 16-byte loads per lane (per matrix) in flight
  for (; c + 96 < chunks; c += 128) {
    Pack8 wa[4], wb[4], xa[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      wa[u].u = __ldcs(w0 + c + u * 32);  // streamed once: do not keep in L1/L2
      if (SWIGLU) wb[u].u = __ldcs(w1 + c + u * 32);
      xa[u].u = __ldg(x4 + c + u * 32);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 xf = __bfloat1622float2(xa[u].h[j]);
        const float2 af = __bfloat1622float2(wa[u].h[j]);
        s0 = fmaf(af.x, xf.x, s0);
        s0 = fmaf(af.y, xf.y, s0);
        if (SWIGLU) {
          const float2 bfv = __bfloat1622float2(wb[u].h[j]);
          s1 = fmaf(bfv.x, xf.x, s1);
          s1 = fmaf(bfv.y, xf.y, s1);
        }
      }
  }
  for (; c < chunks; c += 32) {
    Pack8 wa, wb, xa;
    wa.u = __ldcs(w0 + c);
    if (SWIGLU) wb.u = __ldcs(w1 + c);
    xa.u = __ldg(x4 + c);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 xf = __bfloat1622float2(xa.h[j]);
      const float2 af = __bfloat1622float2(wa.h[j]);
      s0 = fmaf(af.x, xf.x, s0);
      s0 = fmaf(af.y, xf.y, s0);
      if (SWIGLU) {
        const float2 bfv = __bfloat1622float2(wb.h[j]);
        s1 = fmaf(bfv.x, xf.x, s1);
        s1 = fmaf(bfv.y, xf.y, s1);
      }
    }
  }
  s0 = warp_sum(s0);
  if (SWIGLU) s1 = warp_sum(s1);
  if (lane == 0) {
    if (SWIGLU) {
      static_cast<bf16*>(ep.out)[row] = f2bf(silu_f(s0) * s1);
    } else {
      ep_store(ep, 0, row, s0);
    }
  }
}

// Scalar GEMV for K % 8 != 0 or unaligned pointers (tests only).
template <bool SWIGLU>
__global__ void k_gemv_scalar(const bf16* __restrict__ x, const bf16* __restrict__ W, int64_t N, int64_t K, EpDev ep) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (row >= N) return;
  float s0 = 0.f, s1 = 0.f;
  for (int64_t k = lane; k < K; k += 32) {
    const float xv = bf2f(x[k]);
    s0 += bf2f(W[row * K + k]) * xv;
    if (SWIGLU) s1 += bf2f(W[(row + N) * K + k]) * xv;
  }
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  if (lane == 0) {
    if (SWIGLU)
      static_cast<bf16*>(ep.out)[row] = f2bf(silu_f(s0) * s1);
    else
      ep_store(ep, 0, row, s0);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

void gemm_bf16_reference(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M, int64_t N,
                         int64_t K, const Epilogue& ep, void* stream) {
  if (M <= 0 || N <= 0) return;
  dim3 grid(unsigned(ceil_div(N, 128)), unsigned(M));
  k_gemm_ref<<<grid, 128, 0, as_stream(stream)>>>(reinterpret_cast<const bf16*>(A), lda,
                                                   reinterpret_cast<const bf16*>(W), ldw, M, N, K, to_dev(ep));
  PLM_CU_LAUNCH_CHECK();
}

namespace {
constexpr int kGemmPaths = 7;  // GemmPath values
GemmPath path_from_env() {
  GemmPath p = GemmPath::kAuto;
  const char* e = std::getenv("PLM_CUDA_GEMM");
  if (e) gemm_path_from_name(e, &p);
  return p;
}
std::atomic<int> g_path{-1};
std::atomic<uint64_t> g_launches[kGemmPaths];
void count_launch(GemmPath k) { g_launches[int(k)].fetch_add(1, std::memory_order_relaxed); }
}  // namespace

bool gemm_path_from_name(const char* name, GemmPath* out) {
  for (int p = 1; p < kGemmPaths; ++p)
    if (std::strcmp(name, gemm_path_name(GemmPath(p))) == 0) {
      *out = GemmPath(p);
      return true;
    }
  return false;
}

uint64_t gemm_launch_count(GemmPath kernel) { return g_launches[int(kernel)].load(); }

void set_gemm_path(GemmPath p) { g_path.store(int(p)); }
GemmPath gemm_path() {
  int p = g_path.load();
  if (p < 0) {
    p = int(path_from_env());
    g_path.store(p);
  }
  return GemmPath(p);
}
const char* gemm_path_name(GemmPath p) {
  switch (p) {
    case GemmPath::kMma: return "mma";
    case GemmPath::kWgmma128: return "wgmma128";
    case GemmPath::kWgmma256: return "wgmma256";
    case GemmPath::kTma128: return "tma128";
    case GemmPath::kTma256: return "tma256";
    case GemmPath::kTma128p: return "tma128p";
    default: return "auto";
  }
}

void gemm_bf16(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M, int64_t N, int64_t K,
               const Epilogue& ep, void* stream) {
  if (M <= 0 || N <= 0) return;
  const GemmPath path = gemm_path();
  if (M >= 64) {
    // auto = tma128p: at least as fast as tma128 on every shape measured on the H100 (benchmarks/RESULTS.md)
    if (path == GemmPath::kAuto || path == GemmPath::kTma128 || path == GemmPath::kTma256 ||
        path == GemmPath::kTma128p) {
      const GemmPath k = path == GemmPath::kAuto ? GemmPath::kTma128p : path;
      if (gemm_bf16_wgmma_tma(k == GemmPath::kTma256 ? 256 : 128, A, lda, W, ldw, M, N, K, ep,
                              k == GemmPath::kTma128p, stream)) {
        count_launch(k);
        return;
      }
    } else if (path == GemmPath::kWgmma128 || path == GemmPath::kWgmma256) {
      const GemmPath k = path;
      if (gemm_bf16_wgmma(k == GemmPath::kWgmma256 ? 256 : 128, A, lda, W, ldw, M, N, K, ep, stream)) {
        count_launch(k);
        return;
      }
    }
    if (path != GemmPath::kAuto && path != GemmPath::kMma) {
      static std::atomic<bool> warned{false};
      if (!warned.exchange(true))  // the asked-for kernel cannot run: say so once, never mislabel timings
        std::fprintf(stderr, "perception-lm: GEMM kernel %s did not run for %lldx%lldx%lld; using mma.sync\n",
                     gemm_path_name(path), (long long)M, (long long)N, (long long)K);
    }
  }
  if (!gemm_operands_vectorizable(A, lda, W, ldw, K)) {
    gemm_bf16_reference(A, lda, W, ldw, M, N, K, ep, stream);
    return;
  }
  static bool attr_set[64] = {};  // per device; set by the first (uncaptured) call
  int dev = 0;
  PLM_CU_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64 || !attr_set[dev]) {
    PLM_CU_CHECK(cudaFuncSetAttribute(k_gemm_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, int(GEMM_SMEM)));
    if (dev >= 0 && dev < 64) attr_set[dev] = true;
  }
  dim3 grid(unsigned(ceil_div(N, BN)), unsigned(ceil_div(M, BM)));
  count_launch(GemmPath::kMma);
  k_gemm_bf16<<<grid, GEMM_THREADS, GEMM_SMEM, as_stream(stream)>>>(
      reinterpret_cast<const bf16*>(A), lda, reinterpret_cast<const bf16*>(W), ldw, M, N, K, to_dev(ep));
  PLM_CU_LAUNCH_CHECK();
}

void gemv_bf16(const uint16_t* x, const uint16_t* W, int64_t N, int64_t K, const Epilogue& ep, bool swiglu,
               void* stream) {
  if (N <= 0) return;
  const unsigned blocks = unsigned(ceil_div(N, 8));
  const bf16* xb = reinterpret_cast<const bf16*>(x);
  const bf16* wb = reinterpret_cast<const bf16*>(W);
  const bool fast = K % 8 == 0 && aligned16(x) && aligned16(W);
  cudaStream_t s = as_stream(stream);
  if (fast) {
    if (swiglu)
      k_gemv_bf16<true><<<blocks, 256, 0, s>>>(xb, wb, N, K, to_dev(ep));
    else
      k_gemv_bf16<false><<<blocks, 256, 0, s>>>(xb, wb, N, K, to_dev(ep));
  } else {
    if (swiglu)
      k_gemv_scalar<true><<<blocks, 256, 0, s>>>(xb, wb, N, K, to_dev(ep));
    else
      k_gemv_scalar<false><<<blocks, 256, 0, s>>>(xb, wb, N, K, to_dev(ep));
  }
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
