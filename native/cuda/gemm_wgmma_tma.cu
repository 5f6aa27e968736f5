// Hopper GEMM, warp-specialized (sm_90a): the bulk tensor copy engine (TMA) feeds wgmma.
//   C[M, N] = A[M, K] · W[N, K]^T + fused epilogue (gemm_epilogue.cuh), the same contract as gemm_bf16.
// Block tile 128 x BN x 64, 384 threads: warpgroup 0 is the producer (one thread issues two TMA copies per
// k tile into a ring of stages), warpgroups 1 and 2 each multiply 64 rows. full[s] completes when a stage's
// bytes have landed (expect_tx); empty[s] when all 256 consumer threads are done reading it. TMA writes the
// 128-byte swizzled layout that gemm_wgmma.cu builds by hand with cp.async, so the descriptors are the same.
// Persistent form (tma128p): a grid of one block per SM walks the tiles in the same order, the stage ring
// running on across tiles, so the producer loads the next tile while the consumers run the epilogue.
// Checked against the CPU matmul by plm_cuda_test ("gemm ... [tma128]" / "[tma256]" / "[tma128p]"); tma128p
// is the default on Hopper (H100 run of 2026-11-27: 482 vs 394 TFLOP/s at 8192^3, never slower).
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes from the runtime's driver entry point
#include <algorithm>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/gemm.cuh"
#include "cuda/gemm_epilogue.cuh"
#include "cuda/wgmma.cuh"

namespace plm::cuda {

namespace {

constexpr int TMA_BM = 128, TMA_BK = 64, TMA_THREADS = 384, TMA_CONSUMERS = 256;
static_assert(TMA_THREADS == 128 + TMA_CONSUMERS, "one producer warpgroup, two consumer warpgroups");

template <int BN>
struct TmaTile {
  static constexpr int kStages = BN == 128 ? 6 : 4;
  static constexpr int kABytes = TMA_BM * TMA_BK * 2;  // [128][64] bf16
  static constexpr int kBBytes = BN * TMA_BK * 2;      // [BN][64] bf16
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr size_t kSmem = size_t(kStages) * kStageBytes + 2 * kStages * sizeof(uint64_t) + 1024;
};

template <int BN>
__global__ void __launch_bounds__(TMA_THREADS, 1)
    k_gemm_wgmma_tma(const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_w, int64_t M,
                     int64_t N, int64_t K, EpDev ep) {
#if PLM_HAVE_WGMMA
  using T = TmaTile<BN>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(base + T::kStages * T::kStageBytes);  // [kStages]
  uint64_t* empty = full + T::kStages;                                                // [kStages]
  const int tid = threadIdx.x, wg = tid >> 7;
  const int ktiles = int((K + TMA_BK - 1) / TMA_BK);
  const int ntn = int((N + BN - 1) / BN);
  const int ntiles = ntn * int((M + TMA_BM - 1) / TMA_BM);
  // Tiles blockIdx.x, + gridDim.x, ...: one per block when the grid covers them all, several when persistent.
  // `it` counts k tiles over the block's whole walk: stage it % kStages, its use number it / kStages.

  if (tid == 0) {
    for (int s = 0; s < T::kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], TMA_CONSUMERS);
    }
    fence_mbar_init();
  }
  __syncthreads();

  if (wg == 0) {
    if (tid == 0) {
      uint32_t it = 0;
      for (int tile = int(blockIdx.x); tile < ntiles; tile += int(gridDim.x)) {
        const int32_t bm = int32_t(tile / ntn) * TMA_BM, bn = int32_t(tile % ntn) * BN;
        for (int kt = 0; kt < ktiles; ++kt, ++it) {
          const int s = int(it % T::kStages);
          const uint32_t round = it / T::kStages;
          mbar_wait(&empty[s], (round & 1) ^ 1);  // round 0 passes at once: the "previous" phase counts as done
          mbar_arrive_expect_tx(&full[s], T::kStageBytes);
          unsigned char* st = base + s * T::kStageBytes;
          tma_load_2d(st, &tm_a, kt * TMA_BK, bm, &full[s]);
          tma_load_2d(st + T::kABytes, &tm_w, kt * TMA_BK, bn, &full[s]);
        }
      }
    }
    return;  // the producer warpgroup has no epilogue; consumers never wait on a block barrier again
  }

  const int cw = wg - 1;  // consumer warpgroup: rows 64 * cw .. + 63 of the block tile
  const int ct = tid - 128 * wg;  // thread within the consumer warpgroup
  const int lane = ct & 31, w = ct >> 5, g = lane >> 2, t4 = lane & 3;
  uint32_t it = 0;
  for (int tile = int(blockIdx.x); tile < ntiles; tile += int(gridDim.x)) {
    const int32_t bm = int32_t(tile / ntn) * TMA_BM, bn = int32_t(tile % ntn) * BN;
    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
    for (int kt = 0; kt < ktiles; ++kt, ++it) {
      const int s = int(it % T::kStages);
      mbar_wait(&full[s], (it / T::kStages) & 1);
      const unsigned char* sa = base + s * T::kStageBytes + cw * (64 * 128);
      const unsigned char* sb = base + s * T::kStageBytes + T::kABytes;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < TMA_BK / 16; ++kk) wgmma_tile<BN>(acc, smem_desc(sa + kk * 32), smem_desc(sb + kk * 32));
      wgmma_commit();
      wgmma_wait<1>();                                     // k tile it - 1's products are done: release its stage
      if (kt > 0) mbar_arrive(&empty[(it - 1) % T::kStages]);
    }
    wgmma_wait<0>();
    if (ktiles > 0) mbar_arrive(&empty[(it - 1) % T::kStages]);  // the tile's last stage: free to refill

    const int64_t row0 = int64_t(bm) + cw * 64 + w * 16 + g;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
      const int64_t col = int64_t(bn) + i * 8 + t4 * 2;
      if (row0 < M) ep_store2(ep, row0, col, N, acc[4 * i], acc[4 * i + 1]);
      if (row0 + 8 < M) ep_store2(ep, row0 + 8, col, N, acc[4 * i + 2], acc[4 * i + 3]);
    }
  }
#endif
}

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encode_tiled_fn() {
  static EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    cudaGetLastError();
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}

// Row-major bf16 [rows, ld] seen as a 2D tensor {cols, rows}; box {64, box_rows}, 128-byte swizzle, zero fill.
bool encode_rows(CUtensorMap* m, const void* ptr, int64_t rows, int64_t cols, int64_t ld, int box_rows) {
  EncodeTiledFn fn = encode_tiled_fn();
  if (!fn) return false;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld) * 2};
  const cuuint32_t box[2] = {cuuint32_t(TMA_BK), cuuint32_t(box_rows)};
  const cuuint32_t estr[2] = {1, 1};
  return fn(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(ptr), dims, strides, box, estr,
            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

int sm_count() {
  static int n[64] = {};  // per device
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  if (n[dev] == 0 && cudaDeviceGetAttribute(&n[dev], cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) n[dev] = 0;
  return n[dev];
}

template <int BN>
bool launch_tma(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M, int64_t N, int64_t K,
                const Epilogue& ep, bool persistent, void* stream) {
  static bool attr_ok = cudaFuncSetAttribute(k_gemm_wgmma_tma<BN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             int(TmaTile<BN>::kSmem)) == cudaSuccess;
  if (!attr_ok) {
    cudaGetLastError();
    return false;
  }
  CUtensorMap ta, tw;
  if (!encode_rows(&ta, A, M, K, lda, TMA_BM) || !encode_rows(&tw, W, N, K, ldw, BN)) return false;
  const int64_t tiles = ceil_div(N, BN) * ceil_div(M, TMA_BM);
  if (tiles >= (int64_t(1) << 31)) return false;
  const int sms = persistent ? sm_count() : 0;
  const unsigned grid = unsigned(sms > 0 ? std::min<int64_t>(tiles, sms) : tiles);  // one block per SM fits (smem)
  k_gemm_wgmma_tma<BN><<<grid, TMA_THREADS, TmaTile<BN>::kSmem, as_stream(stream)>>>(ta, tw, M, N, K, to_dev(ep));
  PLM_CU_LAUNCH_CHECK();
  return true;
}

}  // namespace

bool gemm_bf16_wgmma_tma(int bn, const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M,
                         int64_t N, int64_t K, const Epilogue& ep, bool persistent, void* stream) {
  if (M <= 0 || N <= 0) return true;
  // TMA: 16-byte aligned base, row strides a multiple of 16 bytes (both as for every kernel), int32 coordinates.
  const bool int32_coords = M < (int64_t(1) << 31) && N < (int64_t(1) << 31);
  if (!gemm_operands_vectorizable(A, lda, W, ldw, K) || !int32_coords || (bn != 128 && bn != 256) ||
      !gemm_wgmma_available())
    return false;
  return bn == 128 ? launch_tma<128>(A, lda, W, ldw, M, N, K, ep, persistent, stream)
                   : launch_tma<256>(A, lda, W, ldw, M, N, K, ep, persistent, stream);
}

}  // namespace plm::cuda
