// Internal: the ISA-specific matmul kernels behind cpu::matmul(). Each lives in a file compiled with its
// own ISA flags (gemm_avx512.cpp, gemm_avx512bf16.cpp, gemm_amx.cpp, gemm_avx2.cpp) and must only be called after
// cpu_features() says the CPU and OS support it; gemm_neon.cpp needs no flags and no check (NEON is part of
// every ARMv8-A CPU) and exists only in aarch64 builds. Each returns false when it does not handle the case
// (dtype, shape), and the caller falls back to the next kernel.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu/matmul.h"

namespace plm::cpu::kernels {

// Work splits shared by the kernels. Internal linkage: each kernel file is compiled with its own ISA flags,
// so an inline function here must never be merged across files.
namespace {

// Row ranges for a GEMV over N weight rows of row_bytes each: ~64 KiB of weights per task or more, a multiple
// of `align` (a power of two) rows, and at most 4 tasks per thread so a busy core doesn't stall the others.
struct RowSplit {
  int64_t rows, tasks;
};
inline RowSplit gemv_row_split(int64_t N, int64_t row_bytes, int threads, int64_t align) {
  const int64_t mask = ~(align - 1);
  int64_t rows = std::max<int64_t>(align, ((65536 / std::max<int64_t>(row_bytes, 1)) + align - 1) & mask);
  int64_t tasks = (N + rows - 1) / rows;
  if (tasks > 4 * threads) {
    tasks = 4 * threads;
    rows = (((N + tasks - 1) / tasks) + align - 1) & mask;
    tasks = (N + rows - 1) / rows;
  }
  return {rows, tasks};
}

// Column chunks of a GEMM whose rows come in `mblocks` blocks: about 4 (row block, column chunk) tasks per
// thread, each chunk a whole number of `panel`-wide panels.
struct ColSplit {
  int64_t ncols, nchunks;
};
inline ColSplit gemm_col_split(int64_t mblocks, int64_t N, int threads, int64_t panel) {
  const int64_t want = std::max<int64_t>(1, (4 * threads + mblocks - 1) / mblocks);
  const int64_t ncols = std::max<int64_t>(panel, ((N + want - 1) / want + panel - 1) / panel * panel);
  return {ncols, (N + ncols - 1) / ncols};
}

}  // namespace

// f32 activations, bf16/f16/f32 weights read in place, f32 accumulation (AVX-512F). row_invariant: every row
// computed as the GEMV computes it, for any M (bf16 weights with K % 32 == 0 only; returns false otherwise).
bool matmul_avx512_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                       ThreadPool* pool, bool row_invariant = false);
// Same with AVX2+FMA+F16C (GEMV for small M only; larger M returns false).
bool matmul_avx2_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool);
// Same with AVX2+FMA+F16C for M > 8 (panel GEMM, gemm_panel_avx2.cpp; M <= 8 returns false).
bool matmul_avx2_panel_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                           ThreadPool* pool);
// bf16 activations (x rounded to nearest even), bf16 weights, f32 accumulation on AMX tiles.
// Needs K % 32 == 0, N % 32 == 0; returns false otherwise.
bool matmul_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool);
// Several matrices over the same x (MatmulOut, cpu/matmul.h): x converted once, one parallel region; with
// `norm`, each row of x is normed (cpu/norms.h, one row at a time) right before its conversion.
bool matmul_amx_bf16_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool,
                           const RowNorm* norm = nullptr);
// The same over x already in the kernel's bf16 tile order (MatmulOut::tiles of an earlier call).
bool matmul_amx_bf16_group_tiles(const uint16_t* xb, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool);
// bf16(silu(gate) · up) [M, cols] into the tile order above (cols % 32 == 0, rows up to 32-padding zero).
void silu_mul_tiles_amx(const float* gate, const float* up, int64_t M, int64_t cols, uint16_t* tiles, ThreadPool* pool);
// w (bf16, rows and cols multiples of 32) -> out in WeightMatrix::bf16_tiles order (64-byte aligned).
void pack_bf16_tiles_amx(const WeightMatrix& w, uint8_t* out, ThreadPool* pool);
// The same kernel family on AVX512-BF16 without AMX (gemm_avx512bf16.cpp): bf16 activations in the same tile
// order, the same packed W panels and epilogues, vdpbf16ps instead of tile instructions; same coverage (K % 32,
// every N % 32, returns false otherwise). Any M >= 1 (rows are padded to 32 in the tile order).
bool matmul_avx512bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);
bool matmul_avx512bf16_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool,
                             const RowNorm* norm = nullptr);
bool matmul_avx512bf16_group_tiles(const uint16_t* xb, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool);
void silu_mul_tiles_avx512bf16(const float* gate, const float* up, int64_t M, int64_t cols, uint16_t* tiles,
                               ThreadPool* pool);
void pack_bf16_tiles_avx512bf16(const WeightMatrix& w, uint8_t* out, ThreadPool* pool);
// The decode GEMV at precision bf16 (gemv_avx512bf16.cpp, any CPU with AVX512-BF16, AMX or not): M <= 8 rows of
// x rounded to bf16, bf16 weights in place, vdpbf16ps; every row computed alike for any M. K % 32 == 0, no
// quantization; returns false otherwise.
bool gemv_avx512bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);
// The same GEMV on AMX CPUs (gemv_amx.cpp): M <= 16 rows of x rounded to bf16, bf16 weights in place as A tiles,
// each row computed alike for any M, and as the prefill kernel (matmul_amx_bf16) computes it. K % 32 == 0,
// N % 16 == 0, no quantization; returns false otherwise.
bool gemv_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);
#if defined(__aarch64__)
// f32 activations, bf16/f16/f32 weights read in place, f32 accumulation (ARM64 NEON): GEMV for M <= 8,
// panel GEMM above. Returns false only for other weight dtypes.
bool matmul_neon_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool);
// bf16 activations (x rounded to nearest even), bf16 weights, f32 accumulation in BFMMLA (gemm_neonbf16.cpp):
// only where cpu_features().neon_bf16; M > 8, any K and N. Returns false for other dtypes and M <= 8.
bool matmul_neon_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                      ThreadPool* pool);
#endif

}  // namespace plm::cpu::kernels
