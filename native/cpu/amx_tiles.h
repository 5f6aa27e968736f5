// AMX tile setup shared by the AMX kernels (include only from *_amx.cpp files, which get the AMX flags). The
// operand layouts (a_tile_offset, transpose16x16_u32) are in tiles_avx512.h: the AVX512-BF16 kernels read them too.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/tiles_avx512.h"

namespace plm::cpu::kernels {
// Internal linkage: these are compiled with per-file ISA flags and must never be merged across files.
namespace {

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

}  // namespace
}  // namespace plm::cpu::kernels
