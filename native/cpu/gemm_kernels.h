// Internal: the ISA-specific matmul kernels behind cpu::matmul(). Each lives in a file compiled with its
// own ISA flags (gemm_avx512.cpp, gemm_amx.cpp, gemm_avx2.cpp) and must only be called after
// cpu_features() says the CPU and OS support it; gemm_neon.cpp needs no flags and no check (NEON is part of
// every ARMv8-A CPU) and exists only in aarch64 builds. Each returns false when it does not handle the case
// (dtype, shape), and the caller falls back to the next kernel.
#pragma once
#include <cstdint>

#include "cpu/matmul.h"

namespace plm::cpu::kernels {

// f32 activations, bf16/f16/f32 weights read in place, f32 accumulation (AVX-512F).
bool matmul_avx512_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                       ThreadPool* pool);
// Same with AVX2+FMA+F16C (GEMV for small M only; larger M returns false).
bool matmul_avx2_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool);
// bf16 activations (x rounded to nearest even), bf16 weights, f32 accumulation on AMX tiles.
// Needs K % 32 == 0, N % 32 == 0; returns false otherwise.
bool matmul_amx_bf16(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool);
#if defined(__aarch64__)
// f32 activations, bf16/f16/f32 weights read in place, f32 accumulation (ARM64 NEON): GEMV for M <= 8,
// panel GEMM above. Returns false only for other weight dtypes.
bool matmul_neon_f32(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y,
                     ThreadPool* pool);
#endif

}  // namespace plm::cpu::kernels
