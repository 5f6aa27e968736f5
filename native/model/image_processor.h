// PerceptionLM image / video-frame preprocessing, matching Hugging Face transformers 5.18
// `PerceptionLMImageProcessor` (the torchvision "fast" processor, vision_input_type "thumb+tile")
// and `PerceptionLMVideoProcessor` on CPU.
#pragma once
#include <cstdint>
#include <vector>

#include "model/tiling.h"

namespace plm {

class ThreadPool;

// Inputs larger than this are rejected with ErrorCode::kImageDecode (see validate_image_size).
constexpr int kMaxImageSide = 65535;
constexpr int64_t kMaxImagePixels = int64_t{1} << 28;  // 268,435,456 pixels (e.g. 16384 x 16384)

struct ProcessedImage {
  std::vector<float> pixel_values;  // [num_tiles, 3, S, S], thumbnail first then row-major tiles
  int num_tiles = 0;                // 1 + grid.n_w * grid.n_h
  TileGrid grid{1, 1};
};

// Throws plm::Error(kImageDecode) for zero / negative sizes, a side > kMaxImageSide or more than
// kMaxImagePixels pixels; the message states the limit.
void validate_image_size(int width, int height);

// rgb: [height, width, 3] uint8. tile_size S > 0, max_num_tiles >= 1.
//  1. thumbnail: the whole image stretched to S x S;
//  2. grid = select_tile_grid(width, height, S, max_num_tiles);
//  3. the whole image stretched to (n_w*S) x (n_h*S) and cut into n_w*n_h tiles, row-major;
//  4. every pixel normalized as (float(x) - 127.5f) / 127.5f, channels first.
// Resizes use resize_bicubic_antialias_u8 (bit-exact with torchvision on CPU).
ProcessedImage preprocess_image(const uint8_t* rgb, int width, int height, int tile_size, int max_num_tiles,
                                ThreadPool* pool);

// One video frame: rgb [height, width, 3] uint8 -> [3, S, S] float, a single S x S stretch (no
// tiling), normalized like images.
std::vector<float> preprocess_frame(const uint8_t* rgb, int width, int height, int tile_size, ThreadPool* pool);

// Same as preprocess_frame but writes into out ([3, S, S] floats, caller-allocated).
void preprocess_frame_into(const uint8_t* rgb, int width, int height, int tile_size, float* out, ThreadPool* pool);

}  // namespace plm
