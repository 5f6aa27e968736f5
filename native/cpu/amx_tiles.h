// AMX tile setup and operand packing helpers shared by the AMX kernels (include only from *_amx.cpp files, which get the AMX flags).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace plm::cpu::kernels {
// Internal linkage: these are compiled with per-file ISA flags and must never be merged across files.
namespace {

// Offset (in bf16 elements) of A tile (row block m / 16, k chunk kc) in a tile-ordered activation
// [Mp/16][K/32][16 rows][32 k] (cpu::TileActivations; each A tile one contiguous KiB).
inline int64_t a_tile_offset(int64_t m, int64_t kc, int64_t K) { return ((m / 16) * (K / 32) + kc) * 512; }

// Palette 1, all 8 tiles as 16 rows x 64 bytes (16x16 f32 or 16x32 bf16).
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

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
