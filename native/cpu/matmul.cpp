// Portable reference matmul: blocks of W rows are widened to f32 once and reused for every row of x.
// The x86 fast paths (AVX-512, AMX, AVX2) live in their own files and take over through dispatch when
// present; on aarch64 the NEON kernel (gemm_neon.cpp) takes every float weight matrix.
#include "cpu/matmul.h"

#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/align.h"
#include "core/error.h"
#include "core/half.h"
#include "cpu/activations.h"
#include "cpu/cpu_features.h"
#include "cpu/rope.h"
#include "cpu/gemm_kernels.h"
#include "cpu/norms.h"
#include "cpu/quant.h"

namespace plm::cpu {

void weight_row_to_f32(const WeightMatrix& w, int64_t row, float* out) {
  if (w.quant != Quant::kNone) return dequantize_row(w, row, out);
  const size_t esz = dtype_size(w.dtype);
  to_f32(w.dtype, static_cast<const uint8_t*>(w.data) + static_cast<size_t>(row) * w.cols * esz, out, w.cols);
}

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  // 8 independent partial sums so the compiler can vectorize without reassociation flags.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

}  // namespace

namespace {
void matmul_portable(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);

#if defined(__x86_64__) || defined(_M_X64)
bool avx512_usable() {
  static const CpuFeatures& f = cpu_features();
  static const bool avx512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
  return avx512;
}
// The AMX kernels (gemm_amx.cpp) run: AMX-BF16 and AVX512-BF16 granted, and the AVX-512 they also use.
bool amx_usable() {
  static const bool amx = cpu_features().amx_bf16 && cpu_features().avx512_bf16 && avx512_usable();
  return amx;
}
// The AVX512-BF16 kernels (gemm_avx512bf16.cpp) run in their place: AVX512-BF16 without AMX.
bool avx512bf16_usable() {
  static const bool v = cpu_features().avx512_bf16 && avx512_usable() && !amx_usable();
  return v;
}
// The bf16 decode GEMV: vdpbf16ps on any AVX512-BF16 CPU (AMX ones too: AMX tiles do not pay off for 8 rows).
bool bf16_gemv_usable() {
  static const bool v = cpu_features().avx512_bf16 && avx512_usable();
  return v;
}
// PLM_GEMV_AMX=0 keeps the vdpbf16ps GEMV on AMX CPUs (to compare the two; read once).
bool gemv_amx_disabled() {
  static const bool off = [] {
    const char* v = std::getenv("PLM_GEMV_AMX");
    return v && std::string(v) == "0";
  }();
  return off;
}
// The AMX bf16 GEMV runs for these weights: where the AMX prefill kernel covers them too (rows and cols multiples
// of 32; the GEMV itself takes rows % 16), because the two compute a row alike, so a prompt chunk of any length
// gives the same bits. Elsewhere 9-80 rows would round x to bf16 where a long chunk computes in f32. Matrices
// prepacked for the prefill kernel (the vision tower: their mapped pages are dropped) stay with it.
bool amx_gemv_covers(const WeightMatrix& w) {
  return amx_usable() && !gemv_amx_disabled() && w.dtype == DType::kBF16 && w.quant == Quant::kNone &&
         w.cols % 32 == 0 && w.rows % 32 == 0 && !w.bf16_tiles;
}
// Up to kAmxGemvRows rows the AMX GEMV runs in place of the prefill kernel (the same bits, at least twice the
// rate: the prefill kernel repacks each weight panel per call), so short prompt chunks skip the tile chains.
bool amx_gemv_rows(Precision precision, int64_t M, const WeightMatrix& w) {
  return precision == Precision::kBF16 && M <= kAmxGemvRows && amx_gemv_covers(w);
}
// A matmul of M rows at `precision` goes to the AMX kernels (which still decline shapes they don't cover).
bool amx_rows(Precision precision, int64_t M) { return precision == Precision::kBF16 && amx_usable() && M >= 32; }
// ... or to the AVX512-BF16 kernels: the same operands and epilogues, for every M above the GEMV's 8 rows.
bool avx512bf16_rows(Precision precision, int64_t M) {
  return precision == Precision::kBF16 && avx512bf16_usable() && M > 8;
}
// One of the two runs the matmul: the tile-ordered bf16 operands (MatmulOut::tiles, matmul_from_tiles) exist.
bool tile_rows(Precision precision, int64_t M) { return amx_rows(precision, M) || avx512bf16_rows(precision, M); }
// matmul_group on the bf16 tile kernels; false where they don't run or decline the shapes.
bool tile_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool, Precision precision,
                const RowNorm* norm) {
  if (amx_rows(precision, M)) {
    const bool gemv = std::all_of(outs, outs + count, [&](const MatmulOut& o) {
      return amx_gemv_rows(precision, M, *o.w) && !o.tiles && o.epilogue != Epilogue::kSwiGLU;
    });
    return !gemv && kernels::matmul_amx_bf16_group(x, M, outs, count, pool, norm);
  }
  if (avx512bf16_rows(precision, M)) return kernels::matmul_avx512bf16_group(x, M, outs, count, pool, norm);
  return false;
}
#endif
}  // namespace

bool bf16_matmul_available() {
#if defined(__x86_64__) || defined(_M_X64)
  return amx_usable() || avx512bf16_usable();
#elif defined(__aarch64__)
  return cpu_features().neon_bf16;
#else
  return false;
#endif
}

bool bf16_rounds_activations(int64_t M, const WeightMatrix& w) {
  if (w.quant != Quant::kNone || w.dtype != DType::kBF16 || w.rows <= 0 || w.cols <= 0) return false;
#if defined(__x86_64__) || defined(_M_X64)
  if (M <= kAmxGemvRows && amx_gemv_covers(w)) return true;       // the AMX decode GEMV (gemv_amx)
  if (M <= kGemvRows) return bf16_gemv_usable() && w.cols % 32 == 0;  // the decode GEMV (gemv_avx512bf16)
  return tile_rows(Precision::kBF16, M) && w.rows % 32 == 0 && w.cols % 32 == 0;
#elif defined(__aarch64__)
  return M > 8 && cpu_features().neon_bf16;
#else
  (void)M;
  return false;
#endif
}

int64_t decode_rows_per_call(Precision precision, const WeightMatrix& w) {
#if defined(__x86_64__) || defined(_M_X64)
  if (precision == Precision::kBF16 && amx_gemv_covers(w)) return kAmxGemvRows;
#else
  (void)precision, (void)w;
#endif
  return kGemvRows;
}

const char* decode_bf16_kernel_name() {
#if defined(__x86_64__) || defined(_M_X64)
  if (amx_usable() && !gemv_amx_disabled()) return "amx-bf16 (GEMV, bf16 activations, weights as A tiles)";
  if (bf16_gemv_usable()) return "avx512-bf16 (GEMV, bf16 activations, vdpbf16ps)";
#endif
  return nullptr;
}

const char* matmul_kernel_name() {
#if defined(__x86_64__) || defined(_M_X64)
  if (amx_usable()) return "avx512+amx-bf16";
  if (avx512bf16_usable()) return "avx512+avx512-bf16";
  if (avx512_usable()) return "avx512";
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && f.f16c) return "avx2";
#elif defined(__aarch64__)
  if (cpu_features().neon) return "neon";
#endif
  return "portable";
}

const char* gemm_kernel_name(Precision precision) {
#if defined(__x86_64__) || defined(_M_X64)
  if (precision == Precision::kBF16 && amx_usable()) return "amx-bf16 (tiles)";
  if (precision == Precision::kBF16 && avx512bf16_usable()) return "avx512-bf16 (vdpbf16ps)";
  if (avx512_usable()) return "avx512 (f32 panel)";
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && f.f16c) return "avx2 (f32 panel)";
#elif defined(__aarch64__)
  if (precision == Precision::kBF16 && cpu_features().neon_bf16) return "neon-bf16 (bfmmla)";
  if (cpu_features().neon) return "neon (f32 panel)";
#else
  (void)precision;
#endif
  return "portable (f32)";
}

const void* PackedTiles::data() const {
  return static_cast<const void*>(align64(bytes.data()));
}

bool prepack_bf16_tiles(WeightMatrix* w, PackedTiles* out, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  if (!(amx_usable() || avx512bf16_usable()) || w->quant != Quant::kNone || w->dtype != DType::kBF16 ||
      w->rows % 32 != 0 || w->cols % 32 != 0 || w->rows == 0 || w->cols == 0)
    return false;
  out->bytes.resize(static_cast<size_t>(w->rows * w->cols * 2 + 64));
  uint8_t* dst = static_cast<uint8_t*>(const_cast<void*>(out->data()));
  if (amx_usable()) kernels::pack_bf16_tiles_amx(*w, dst, pool);
  else kernels::pack_bf16_tiles_avx512bf16(*w, dst, pool);
  w->bf16_tiles = out->data();
  return true;
#else
  (void)w, (void)out, (void)pool;
  return false;
#endif
}

namespace {

// rope_interleaved_rows over y's first r.cols columns ([M, N]), each image's r.tokens rows restarting the positions.
void rope_pass(float* y, int64_t M, int64_t N, const RopeInterleaved& r, ThreadPool* pool) {
  parallel_for(pool, M, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t img = r0 / r.tokens; img * r.tokens < r1; ++img) {
      const int64_t t0 = std::max(r0, img * r.tokens) - img * r.tokens;
      const int64_t t1 = std::min(r1, (img + 1) * r.tokens) - img * r.tokens;
      rope_interleaved_rows(y + img * r.tokens * N, N, t0, t1, static_cast<int>(r.cols / r.head_dim), r.head_dim,
                            r.prefix, r.cos, r.sin);
    }
  });
}

}  // namespace

void matmul_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool, Precision precision) {
#if defined(__x86_64__) || defined(_M_X64)
  if (tile_group(x, M, outs, count, pool, precision, nullptr)) return;
#endif
  if (matmul_quantized_group(x, M, outs, count, pool)) return;
  for (int i = 0; i < count; ++i) {
    const MatmulOut& o = outs[i];
    if (o.tiles || o.epilogue == Epilogue::kSwiGLU)
      throw Error(ErrorCode::kInternal, "matmul_group: a tile-ordered output needs the bf16 tile kernels (check tile_chain_available)");
    if (o.epilogue == Epilogue::kRopeInterleaved) {
      if (!o.rope) throw Error(ErrorCode::kInternal, "matmul_group: kRopeInterleaved without MatmulOut::rope");
      matmul(x, M, *o.w, o.bias, o.y, pool, precision);
      rope_pass(o.y, M, o.w->rows, *o.rope, pool);
      continue;
    }
    matmul(x, M, *o.w, o.bias, o.y, pool, precision, o.epilogue, o.scale);
  }
}

void matmul_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool, Precision precision,
                  const RowNorm& norm, float* normed) {
#if defined(__x86_64__) || defined(_M_X64)
  if (tile_group(x, M, outs, count, pool, precision, &norm)) return;
#endif
  const int64_t K = outs[0].w->cols;
  if (norm.kind == RowNorm::kLayerNorm) layer_norm(x, norm.weight, norm.bias, normed, M, K, norm.eps, pool);
  else rms_norm(x, norm.weight, normed, M, K, norm.eps, pool);
  matmul_group(normed, M, outs, count, pool, precision);
}

bool tile_chain_available(Precision precision, int64_t M, const WeightMatrix& w) {
#if defined(__x86_64__) || defined(_M_X64)
  return tile_rows(precision, M) && w.quant == Quant::kNone && w.dtype == DType::kBF16 && w.rows % 32 == 0 &&
         w.cols % 32 == 0 && w.cols > 0 && !amx_gemv_rows(precision, M, w);
#else
  (void)precision, (void)M, (void)w;
  return false;
#endif
}

void TileActivations::resize(int64_t M, int64_t cols) {
  const int64_t Mp = (M + 31) / 32 * 32;
  storage_.resize(static_cast<size_t>(Mp * cols + 32));
  data_ = align64(storage_.data());
  for (int64_t m = M; m < Mp; ++m)  // row m's 32 values of each k chunk: 64 bytes at (m / 16, kc) + (m % 16) * 32
    for (int64_t kc = 0; kc < cols / 32; ++kc)
      std::memset(data_ + ((m / 16) * (cols / 32) + kc) * 512 + (m % 16) * 32, 0, 64);
}

void silu_mul_to_tiles(const float* gate, const float* up, int64_t M, int64_t cols, uint16_t* tiles, ThreadPool* pool) {
#if defined(__x86_64__) || defined(_M_X64)
  if (cols % 32 == 0 && (reinterpret_cast<uintptr_t>(tiles) & 63) == 0) {
    if (amx_usable()) return kernels::silu_mul_tiles_amx(gate, up, M, cols, tiles, pool);
    if (avx512bf16_usable()) return kernels::silu_mul_tiles_avx512bf16(gate, up, M, cols, tiles, pool);
  }
#else
  (void)gate, (void)up, (void)M, (void)cols, (void)tiles, (void)pool;
#endif
  throw Error(ErrorCode::kInternal, "silu_mul_to_tiles: no bf16 tile kernel (check tile_chain_available)");
}

void matmul_from_tiles(const uint16_t* x_tiles, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool) {
  bool ok = false;
#if defined(__x86_64__) || defined(_M_X64)
  if (amx_usable()) ok = kernels::matmul_amx_bf16_group_tiles(x_tiles, M, outs, count, pool);
  else if (avx512bf16_usable()) ok = kernels::matmul_avx512bf16_group_tiles(x_tiles, M, outs, count, pool);
#else
  (void)x_tiles, (void)M, (void)outs, (void)count, (void)pool;
#endif
  if (!ok) throw Error(ErrorCode::kInternal, "matmul_from_tiles: no bf16 tile kernel for this shape (check tile_chain_available)");
}

void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool,
            Precision precision, Epilogue epilogue, const float* scale, float* scratch) {
  if (epilogue == Epilogue::kStore) return matmul(x, M, w, bias, y, pool, precision);
  if (epilogue == Epilogue::kSwiGLU || epilogue == Epilogue::kRopeInterleaved)
    throw Error(ErrorCode::kInternal, "matmul: kSwiGLU and kRopeInterleaved are matmul_group outputs");
#if defined(__x86_64__) || defined(_M_X64)
  const MatmulOut out{&w, bias, y, epilogue, scale};
  if (tile_group(x, M, &out, 1, pool, precision, nullptr)) return;
#endif
  const int64_t N = w.rows;
  if (epilogue == Epilogue::kGeluErf) {
    matmul(x, M, w, bias, y, pool, precision);
    gelu_erf(y, M * N, pool);
    return;
  }
  std::vector<float> own;
  if (!scratch) {
    own.resize(static_cast<size_t>(M * N));
    scratch = own.data();
  }
  matmul(x, M, w, bias, scratch, pool, precision);
  const float* h = scratch;
  parallel_for(pool, M, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* yr = y + r * N;
      const float* hr = h + r * N;
      // Product and sum rounded apart, as in the AMX epilogue: this file is built with -ffp-contract=off
      // (CMakeLists.txt), so no compiler fuses them into an FMA (GCC on aarch64 would by default).
      if (scale) for (int64_t c = 0; c < N; ++c) yr[c] += scale[c] * hr[c];
      else for (int64_t c = 0; c < N; ++c) yr[c] += hr[c];
    }
  });
}

void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  matmul(x, M, w, bias, y, pool, Precision::kF32);
}

void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool,
            Precision precision) {
  if (precision == Precision::kF32RowInvariant && M > kGemvRows) {
#if defined(__x86_64__) || defined(_M_X64)
    if (w.quant == Quant::kNone && avx512_usable() && kernels::matmul_avx512_f32(x, M, w, bias, y, pool, true)) return;
#endif
    // Every row as the GEMV computes it: groups of kGemvRows rows.
    for (int64_t m = 0; m < M; m += kGemvRows)
      matmul(x + m * w.cols, std::min(kGemvRows, M - m), w, bias, y + m * w.rows, pool, Precision::kF32);
    return;
  }
  if (precision == Precision::kF32RowInvariant) precision = Precision::kF32;
  if (w.quant != Quant::kNone) return matmul_quantized(x, M, w, bias, y, pool, precision);
#if defined(__x86_64__) || defined(_M_X64)
  static const CpuFeatures& f = cpu_features();
  static const bool avx2 = f.avx2 && f.fma && f.f16c;
  if (amx_gemv_rows(precision, M, w) && kernels::gemv_amx_bf16(x, M, w, bias, y, pool))
    return;
  if (precision == Precision::kBF16 && M <= kGemvRows && bf16_gemv_usable() &&
      kernels::gemv_avx512bf16(x, M, w, bias, y, pool))
    return;
  if (amx_rows(precision, M) && kernels::matmul_amx_bf16(x, M, w, bias, y, pool)) return;
  if (avx512bf16_rows(precision, M) && kernels::matmul_avx512bf16(x, M, w, bias, y, pool)) return;
  if (avx512_usable() && kernels::matmul_avx512_f32(x, M, w, bias, y, pool)) return;
  if (avx2 && kernels::matmul_avx2_f32(x, M, w, bias, y, pool)) return;          // M <= 8
  if (avx2 && kernels::matmul_avx2_panel_f32(x, M, w, bias, y, pool)) return;    // M > 8
#elif defined(__aarch64__)
  if (precision == Precision::kBF16 && M > 8 && cpu_features().neon_bf16 &&
      kernels::matmul_neon_bf16(x, M, w, bias, y, pool))
    return;
  if (cpu_features().neon && kernels::matmul_neon_f32(x, M, w, bias, y, pool)) return;
#else
  (void)precision;
#endif
  matmul_portable(x, M, w, bias, y, pool);
}

namespace {
void matmul_portable(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool) {
  const int64_t N = w.rows, K = w.cols;
  if (w.dtype != DType::kF32 && w.dtype != DType::kBF16 && w.dtype != DType::kF16)
    throw Error(ErrorCode::kUnsupportedDtype, std::string("matmul: unsupported weight dtype ") + dtype_name(w.dtype));
  constexpr int64_t kRowBlock = 16;  // W rows widened per task
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  auto run = [&](int64_t b) {
    thread_local std::vector<float> wf;
    const int64_t n0 = b * kRowBlock, n1 = std::min(N, n0 + kRowBlock);
    const float* wrows;
    if (w.dtype == DType::kF32) {
      wrows = static_cast<const float*>(w.data) + n0 * K;
    } else {
      wf.resize(static_cast<size_t>((n1 - n0) * K));
      for (int64_t n = n0; n < n1; ++n) weight_row_to_f32(w, n, wf.data() + (n - n0) * K);
      wrows = wf.data();
    }
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      float* yr = y + m * N;
      for (int64_t n = n0; n < n1; ++n) yr[n] = dot(xr, wrows + (n - n0) * K, K) + (bias ? bias[n] : 0.f);
    }
  };
  run_tasks(pool, blocks, run);
}

}  // namespace

}  // namespace plm::cpu
