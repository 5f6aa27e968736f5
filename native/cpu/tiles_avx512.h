// The bf16 operand layouts shared by the AMX kernels (*_amx.cpp) and the AVX512-BF16 kernels that read the
// same operands with vdpbf16ps (*_avx512.cpp, *_avx512bf16.cpp): include only from files built with AVX-512 flags.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace plm::cpu::kernels {
// Internal linkage: these are compiled with per-file ISA flags and must never be merged across files.
namespace {

// Offset (in bf16 elements) of A tile (row block m / 16, k chunk kc) in a tile-ordered activation
// [Mp/16][K/32][16 rows][32 k] (cpu::TileActivations; each A tile one contiguous KiB).
inline int64_t a_tile_offset(int64_t m, int64_t kc, int64_t K) { return ((m / 16) * (K / 32) + kc) * 512; }

// 16x16 transpose of 32-bit elements: out[j] = column j of the rows in[0..15].
inline void transpose16x16_u32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
  }
}

}  // namespace
}  // namespace plm::cpu::kernels
