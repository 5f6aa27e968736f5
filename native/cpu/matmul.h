// Linear layers: y[M, N] = x[M, K] · W[N, K]^T (+ bias[N]), the PyTorch nn.Linear layout.
// Weights are read in their stored dtype (bf16, f16 or f32) straight from the mmap; accumulation is f32.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace plm::cpu {

// Weight-only quantization of a matrix (cpu/quant.h): kQ8: int8 [rows][cols] with one f32 scale per row
// (symmetric, w = q * scale); kQ4: 4-bit groups of 32 along a row, 16 bytes per group (byte i holds element
// i in its low nibble and element i + 16 in its high nibble, w = (q - 8) * scale), one f32 scale per group.
enum class Quant { kNone, kQ8, kQ4 };

// A weight matrix [rows = out_features, cols = in_features], row-major, any float dtype, or quantized
// (quant != kNone: data and scales as described above, dtype unused).
struct WeightMatrix {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  Quant quant = Quant::kNone;
  const float* scales = nullptr;
  // Optional, bf16 only: the same values in the AMX kernel's B-tile order (prepack_bf16_tiles). The kBF16
  // matmul on AMX reads it instead of repacking each 32-row panel on every call; every other path reads data.
  const void* bf16_tiles = nullptr;
};

// Owned storage of a prepacked matrix: [rows/32][cols/32][2 halves][16 k-pairs][16 rows][2] bf16, each
// 16x16-pair block one 1 KiB B tile (64-byte aligned inside `bytes`).
struct PackedTiles {
  std::vector<uint8_t> bytes;
  const void* data() const;
};

// Packs w once for the kBF16 matmul on AMX and points w.bf16_tiles at `out`. Returns false and leaves w
// unchanged where that kernel never runs (no AMX-BF16, weights not bf16, rows or cols not multiples of 32).
// The packed copy is as large as the weights: callers drop the mapped pages (release_mapped_pages).
bool prepack_bf16_tiles(WeightMatrix* w, PackedTiles* out, ThreadPool* pool);

// y[M, N] = x[M, K] · W^T + bias. bias may be null. y must not alias x.
void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool);

// Activation precision of the matmuls with many rows (prefill, vision). kF32: f32 activations and
// accumulation (exact to f32 rounding; the fixture tests' mode). kBF16: activations rounded to bf16,
// f32 accumulation, on AMX tiles where the CPU has them, else with AVX512-BF16 vdpbf16ps on the same operands
// (error bound in benchmarks/RESULTS.md).
// Small-M matmuls (decode, M <= 8; 80 on AMX at kBF16): every row is computed by the same operations for any M
// from 1 to that limit (so batching decode rows changes no bits). f32 activations, except kBF16 on AVX512-BF16
// CPUs: x rounded to bf16 and vdpbf16ps (8 decode rows are bound by arithmetic on small CPUs, and it does twice
// the work per instruction), or on AMX CPUs the AMX GEMV (gemv_amx.cpp: the prefill kernel's row arithmetic).
// kF32RowInvariant: kF32 where also every row of a larger M is computed by those same operations (the decoder at
// f32: a token's keys, values and logits do not depend on how many rows share the call, so a prompt prefix
// reused from the cache, or computed in other chunks, gives the same bits as computing it again). AVX-512 with
// bf16 weights (K % 32 == 0) has a blocked GEMM in that order; elsewhere rows go through the GEMV 8 at a time.
enum class Precision { kF32, kBF16, kF32RowInvariant };
constexpr int64_t kGemvRows = 8;  // the largest M the GEMV kernels take
constexpr int64_t kAmxGemvRows = 80;  // ... and the AMX bf16 GEMV (gemv_amx.cpp), where it covers the weights

// The most decode rows one matmul over w at `precision` computes with the GEMV's row-invariant arithmetic:
// kAmxGemvRows where the AMX bf16 GEMV covers w, else kGemvRows.
int64_t decode_rows_per_call(Precision precision, const WeightMatrix& w);

// Same as matmul() with an explicit precision. kBF16 falls back to kF32 where no fast bf16 kernel
// applies (no AMX/AVX512-BF16, a shape the tiles don't cover, or f32/f16 weights).
void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool,
            Precision precision);

// What a matmul does with each output value v = (x · W^T)[r][c] + bias[c]:
//   kStore: y = v.
//   kGeluErf: y = gelu_erf(v) (cpu/activations.h), the same bits as the pass over y afterwards.
//   kAccumulate: y += scale[c] · v, or y += v when scale is null: a transformer block's residual add, the
//     product and the sum rounded separately (as the separate pass over y did).
// On AMX (kBF16) the non-store epilogues run on a finished 32x32 block while the matrix unit works on the
// next one, so they cost no pass over y; elsewhere the matmul runs first and a pass over y follows.
// kSwiGLU (matmul_group on AMX only, MatmulOut::tiles and w_up set, no bias): silu(x·w^T) · (x·w_up^T), written
// as bf16 tiles: the decoder's gate/up with its SwiGLU, the [M, 2 x w.rows] f32 products never stored.
// kRopeInterleaved (matmul_group only, MatmulOut::rope set): y = x·w^T + bias with the Perception Encoder's 2D
// RoPE applied to its first rope->cols columns (q and k of a fused qkv), as rope_interleaved_rows would after.
enum class Epilogue { kStore, kGeluErf, kAccumulate, kSwiGLU, kRopeInterleaved };
// The rotation of Epilogue::kRopeInterleaved: the output's rows are images of `tokens` rows each, the first
// `prefix` of them (CLS) not rotated; columns [0, cols) are heads of head_dim with interleaved pairs (cpu/rope.h).
struct RopeInterleaved {
  const float* cos;  // [tokens - prefix, head_dim / 2]
  const float* sin;
  int64_t tokens;
  int prefix;
  int head_dim;      // a multiple of 16 for the AMX epilogue (a pass after the matmul elsewhere)
  int64_t cols;
};
// matmul() with an epilogue. scale: kAccumulate's per-column factors (may be null). scratch: [M, w.rows] for
// the unfused kAccumulate (null: allocated here).
void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias, float* y, ThreadPool* pool,
            Precision precision, Epilogue epilogue, const float* scale = nullptr, float* scratch = nullptr);
// One output of matmul_group: y[M, w.rows] = x · w^T + bias (bias may be null), through `epilogue`.
struct MatmulOut {
  const WeightMatrix* w;
  const float* bias;
  float* y;
  Epilogue epilogue = Epilogue::kStore;
  const float* scale = nullptr;  // kAccumulate only
  // AMX only (see tile_chain_available), with kGeluErf: the output goes here instead of y, rounded to bf16 in
  // the tile order the next matmul reads (matmul_from_tiles), a TileActivations of [M, w.rows]. Saves the
  // next matmul's f32 read and conversion pass (the ViT's fc1 -> fc2).
  uint16_t* tiles = nullptr;
  const WeightMatrix* w_up = nullptr;  // kSwiGLU only: the second matrix, same shape as w
  const RopeInterleaved* rope = nullptr;  // kRopeInterleaved only
};
// True when a matmul of M rows at `precision` over these bf16 weights runs on AMX, so MatmulOut::tiles and
// matmul_from_tiles can be used.
bool tile_chain_available(Precision precision, int64_t M, const WeightMatrix& w);
// Storage for a tile-ordered bf16 activation of [M, cols] (rows padded to 32 with zeros: resize zeroes rows
// M .. Mp-1, so a writer of rows 0 .. M-1 only, like attention's out_tiles, leaves a valid matmul input):
// data() is 64-byte aligned. Empty (data() null) until resized. cols: a multiple of 32.
class TileActivations {
 public:
  void resize(int64_t M, int64_t cols);
  uint16_t* data() { return data_; }

 private:
  std::vector<uint16_t> storage_;
  uint16_t* data_ = nullptr;
};
// tiles = bf16(silu(gate) · up) in tile order for a matmul with K = cols (the decoder's down projection): the
// bits silu_mul (cpu/activations.h) and that matmul's own conversion would give, with no f32 [M, cols]
// written and read back. gate, up: [M, cols]. Only where tile_chain_available for that matmul. The decoder
// now gets these tiles from Epilogue::kSwiGLU; this is the two-step form that epilogue is tested against.
void silu_mul_to_tiles(const float* gate, const float* up, int64_t M, int64_t cols, uint16_t* tiles, ThreadPool* pool);
// matmul_group over x given as tile-ordered bf16 (written by a MatmulOut::tiles output), K = outs[0].w->cols.
// Only where tile_chain_available; the results are those of matmul_group over the f32 values x came from.
void matmul_from_tiles(const uint16_t* x_tiles, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool);
// The matmuls of several matrices that read the same x (q/k/v, gate/up), each as matmul() computes it. On the
// AMX path x is rounded to bf16 once and all the products share one parallel region (no idle thread at
// the end of each); elsewhere they run one after another. At most 8 outputs.
void matmul_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool, Precision precision);
// A normalization of each row of x before the matmuls (LayerNorm with weight and bias, or RMSNorm with weight),
// computed by cpu/norms.h's functions.
struct RowNorm {
  enum Kind { kLayerNorm, kRmsNorm } kind;
  const float* weight;
  const float* bias;  // LayerNorm only
  float eps;
};
// matmul_group over norm(x), the same results as norming x into `normed` first: on the AMX path each row is
// normed as it is rounded to bf16 (no [M, K] f32 pass written and read back) and `normed` is not touched;
// elsewhere `normed` ([M, K], must not alias x) receives the normed rows and the matmuls read it.
void matmul_group(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool, Precision precision,
                  const RowNorm& norm, float* normed);

// True when kBF16 has a fast kernel on this CPU: AMX-BF16 granted by the OS, AVX512-BF16 (vdpbf16ps), or on
// ARM64 FEAT_BF16 (BFMMLA).
bool bf16_matmul_available();
// True when matmul() at kBF16 over these weights with M rows runs a bf16 kernel, i.e. rounds x to bf16 (else
// it runs the f32 kernels: other dtypes, quantized weights, few rows, shapes the kernel doesn't cover).
bool bf16_rounds_activations(int64_t M, const WeightMatrix& w);

// Which kernel family matmul() uses on this CPU, for `plm info` and benchmarks ("amx-bf16+avx512", ...).
const char* matmul_kernel_name();
// The decode GEMV at precision kBF16 when it differs from the f32 one ("avx512-bf16 (...)"), else nullptr.
const char* decode_bf16_kernel_name();
// The kernel a matmul of many rows (M > 8: prefill, vision) runs at `precision` on this CPU, e.g.
// "avx512-bf16 (vdpbf16ps)" or "avx2 (f32 panel)"; decode (M <= 8) runs the GEMV of matmul_kernel_name().
const char* gemm_kernel_name(Precision precision);

// Reads one row of W as f32 (embedding lookup, tied heads).
void weight_row_to_f32(const WeightMatrix& w, int64_t row, float* out);

}  // namespace plm::cpu
