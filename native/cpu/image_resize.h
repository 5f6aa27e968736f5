// Antialiased bicubic resize of interleaved uint8 images, bit-exact with PyTorch's CPU
// `interpolate(uint8, mode="bicubic", antialias=True, align_corners=False)` — the kernel that
// torchvision's `F.resize(uint8 tensor, BICUBIC)` (and hence the Hugging Face PerceptionLM image and
// video processors) use on CPU.
//
// Semantics (see image_resize.cpp for the derivation):
//   * separable: a horizontal pass (width) into an intermediate uint8 image, then a vertical pass;
//     a pass is skipped when that axis keeps its size; equal sizes copy the input.
//   * per-axis PIL-style support: scale = in/out, support = 2*max(scale, 1), Keys cubic a = -0.5,
//     weights normalized to sum 1 in double, then quantized to int16 at the largest precision that
//     still represents the axis's largest weight; each output is
//     clamp((2^(p-1) + sum(px * w16)) >> p, 0, 255).
#pragma once
#include <cstdint>

namespace plm {

class ThreadPool;

// src: [src_h, src_w, channels] uint8 (row-major, channels interleaved).
// dst: [dst_h, dst_w, channels] uint8, caller-allocated; must not alias src.
// channels in 1..4. pool may be nullptr (runs on the calling thread).
// Throws plm::Error(kInvalidArgument) on non-positive sizes or bad channel counts.
void resize_bicubic_antialias_u8(const uint8_t* src, int src_w, int src_h, int channels, uint8_t* dst,
                                 int dst_w, int dst_h, ThreadPool* pool);

}  // namespace plm
