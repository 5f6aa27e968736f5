// The Perception Encoder ViT (timm Eva as PLM configures it) on the CPU, f32.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/scratch.h"
#include "core/thread_pool.h"
#include "cpu/matmul.h"
#include "model/model.h"
#include "model/runner.h"

namespace plm {

class VisionEncoder {
 public:
  // Activation precision of the large matmuls (cpu::Precision::kBF16: AMX tiles where available). With
  // kBF16 on AMX the first forward() prepacks the blocks' matrices into tile order (as many bytes as the
  // weights, whose mapped pages are then dropped; ~0.4 s for PE-L on 2 cores), so no matmul repacks its
  // weights on every call; text-only use never pays for it.
  void set_precision(cpu::Precision p) { precision_ = p; }
  VisionEncoder(const LoadedModel& model, ThreadPool* pool);

  // pixels [tiles, 3, S, S] -> out [tiles, tokens, width] (the last block's output, CLS included when present).
  // between_blocks, when set, runs after each block (see Decoder::prefill).
  void forward(const float* pixels, int64_t tiles, float* out, const CancelToken* cancel, const DumpFn& dump,
               const std::function<void()>& between_blocks = nullptr);
  int64_t tokens() const { return cfg_.tokens(); }
  int width() const { return cfg_.width; }

 private:
  struct Block {
    std::vector<float> norm1_w, norm1_b, norm2_w, norm2_b;  // [C]
    std::vector<float> qkv_b, proj_b, fc1_b, fc2_b;          // [3C], [C], [mlp], [C]
    std::vector<float> gamma1, gamma2;                       // [C] (empty: no layer scale)
    cpu::WeightMatrix qkv, proj, fc1, fc2;
  };
  const VisionConfig& cfg_;
  ThreadPool* pool_;
  cpu::Precision precision_ = cpu::Precision::kF32;
  cpu::WeightMatrix patch_;             // [C, 3 * p * p]
  std::vector<float> cls_;              // [C] or empty
  std::vector<float> pos_;              // [tokens, C]
  std::vector<float> pre_w_, pre_b_;    // [C] (empty: no norm_pre)
  std::vector<float> post_w_, post_b_;  // [C] (empty: no final norm)
  std::vector<float> rope_cos_, rope_sin_;  // [patches, hd / 2]
  std::vector<Block> blocks_;
  void prepack_bf16();
  bool prepacked_ = false;
  std::vector<cpu::PackedTiles> packed_;  // the blocks' matrices in tile order (empty unless kBF16 on AMX)
  // Activations, kept between calls (core/scratch.h); sizes for M = tiles x tokens rows.
  Scratch<float> h_;                  // [M, C] normed rows (also the patch embedding first)
  Scratch<float> qkv_;                // [M, 3C] (also the patch rows first)
  Scratch<float> a_, f_;              // [M, C] attention output, [M, mlp] fc1 output (f32 paths)
  cpu::TileActivations a_act_, f_act_;  // the same two as bf16 tiles (AMX paths)
};

}  // namespace plm
