// Linear layers on the GPU: C[M, N] = A[M, K] · W[N, K]^T with a fused epilogue (plain C++ declarations).
//   gemm_bf16: tensor cores (wgmma on Hopper, mma.sync m16n8k16 elsewhere; bf16, f32 accumulation), any M,
//              N; K % 8 == 0 for the fast paths (a simple fallback handles any K).
//   gemv_bf16: M = 1 (decode), one warp per output row, 16-byte weight loads: bandwidth-bound.
// TODO(quant): int8 / 4-bit weight GEMV (per-group scales) for the decode path; bf16 only for now.
#pragma once
#include <cstdint>

namespace plm::cuda {

enum class EpMode : int {
  kStoreBf16 = 0,  // out_bf16[r, c] = v
  kStoreF32 = 1,   // out_f32[r, c] = v
  kAddF32 = 2,     // out_f32[r, c] += (scale ? scale[c] : 1) * v   (residual stream, layer scale)
};

struct Epilogue {
  EpMode mode = EpMode::kStoreBf16;
  const float* bias = nullptr;   // [N] or null, added first
  bool gelu = false;             // exact erf GELU after the bias
  const float* scale = nullptr;  // [N] or null, only for kAddF32
  void* out = nullptr;           // bf16 (uint16_t) or f32 [M, ldo]
  int64_t ldo = 0;               // elements between rows of out
};

// A: bf16 [M, lda], W: bf16 [N, ldw] (row n = output feature n), both row-major.
void gemm_bf16(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M, int64_t N, int64_t K,
               const Epilogue& ep, void* stream);

// Decode matrix-vector product: y[N] = W[N, K] · x[K] with the same epilogue (row 0 only).
// x: bf16 [K]. swiglu: W holds [gate (I rows); up (I rows)], N = I and out_bf16[i] = silu(g_i) * u_i.
void gemv_bf16(const uint16_t* x, const uint16_t* W, int64_t N, int64_t K, const Epilogue& ep, bool swiglu,
               void* stream);

// Which kernel gemm_bf16 uses for M >= 64. kAuto: the persistent TMA + wgmma kernel (BN 128, tma128p) on
// sm_90 devices when this build carries sm_90a code, else mma.sync (H100 timings per kernel: benchmarks/RESULTS.md). The environment variable PLM_CUDA_GEMM (mma | wgmma128 | wgmma256) sets it at
// the first call (also tma128 | tma256: the warp-specialized TMA kernel; tma128p: its persistent form, one
// block per SM); set_gemm_path overrides it.
enum class GemmPath : int { kAuto = 0, kMma = 1, kWgmma128 = 2, kWgmma256 = 3, kTma128 = 4, kTma256 = 5, kTma128p = 6 };
void set_gemm_path(GemmPath p);
GemmPath gemm_path();
const char* gemm_path_name(GemmPath p);
// The GemmPath named `name` (one of gemm_path_name's, not "auto"); false for any other string.
bool gemm_path_from_name(const char* name, GemmPath* out);

// What every tensor-core kernel needs: 16-byte aligned A and W with rows of a multiple of 8 elements.
inline bool gemm_operands_vectorizable(const void* A, int64_t lda, const void* W, int64_t ldw, int64_t K) {
  return K % 8 == 0 && lda % 8 == 0 && ldw % 8 == 0 && (reinterpret_cast<uintptr_t>(A) & 15) == 0 &&
         (reinterpret_cast<uintptr_t>(W) & 15) == 0;
}
bool gemm_wgmma_available();  // sm_90 device and sm_90a code in this build
// Launches of each kernel by gemm_bf16 so far (kMma: the mma.sync kernel): tests check which one really ran.
uint64_t gemm_launch_count(GemmPath kernel);

// The Hopper kernel alone (gemm_wgmma.cu), bn = 128 or 256. Returns false, launching nothing, where it
// cannot run (no sm_90a code or device, K % 8 != 0, unaligned rows): the caller falls back.
bool gemm_bf16_wgmma(int bn, const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M, int64_t N,
                     int64_t K, const Epilogue& ep, void* stream);

// The warp-specialized Hopper kernel (gemm_wgmma_tma.cu): TMA loads, same contract and fallback rule.
// persistent: a grid of one block per SM, each walking several tiles.
bool gemm_bf16_wgmma_tma(int bn, const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M,
                         int64_t N, int64_t K, const Epilogue& ep, bool persistent, void* stream);

// Plain reference GEMM (one thread per output, f32): used by tests to cross-check the tensor-core path.
void gemm_bf16_reference(const uint16_t* A, int64_t lda, const uint16_t* W, int64_t ldw, int64_t M, int64_t N,
                         int64_t K, const Epilogue& ep, void* stream);

}  // namespace plm::cuda
