#include "model/image_processor.h"

#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"
#include "cpu/image_resize.h"

namespace plm {
namespace {

// HF fuses rescale (1/255) and normalize (mean = std = 0.5) into mean' = std' = 127.5 and computes
// (float32(x) - 127.5) / 127.5 in float32 (TorchvisionBackend.rescale_and_normalize).
inline float normalize_u8(uint8_t v) { return (static_cast<float>(v) - 127.5f) / 127.5f; }

// Copies the S x S window at (x0, y0) of an HWC uint8 image of row width `img_w` into a CHW float
// tile: out[c, y, x] = normalize(img[y0 + y, x0 + x, c]).   out: [3, S, S]
void write_tile(const uint8_t* img, int img_w, int x0, int y0, int S, float* out) {
  const size_t plane = static_cast<size_t>(S) * S;
  for (int y = 0; y < S; ++y) {
    const uint8_t* row = img + (static_cast<size_t>(y0 + y) * img_w + x0) * 3;
    float* r = out + static_cast<size_t>(y) * S;
    float* g = r + plane;
    float* b = g + plane;
    for (int x = 0; x < S; ++x) {
      r[x] = normalize_u8(row[3 * x + 0]);
      g[x] = normalize_u8(row[3 * x + 1]);
      b[x] = normalize_u8(row[3 * x + 2]);
    }
  }
}

void check_tile_args(int tile_size, int max_num_tiles) {
  if (tile_size <= 0 || tile_size > 4096) {
    throw Error(ErrorCode::kInvalidArgument,
                "tileSize must be in 1..4096, got " + std::to_string(tile_size) + " (PerceptionLM uses 448)");
  }
  if (max_num_tiles < 1 || max_num_tiles > 1024) {
    throw Error(ErrorCode::kInvalidArgument,
                "maxNumTiles must be in 1..1024, got " + std::to_string(max_num_tiles) + " (PerceptionLM uses 36)");
  }
}

}  // namespace

void validate_image_size(int width, int height) {
  if (width <= 0 || height <= 0) {
    throw Error(ErrorCode::kImageDecode, "image has zero size (" + std::to_string(width) + "x" +
                                             std::to_string(height) + "); pass an image with at least 1x1 pixels");
  }
  if (width > kMaxImageSide || height > kMaxImageSide) {
    throw Error(ErrorCode::kImageDecode, "image is " + std::to_string(width) + "x" + std::to_string(height) +
                                             "; the largest supported side is " + std::to_string(kMaxImageSide) +
                                             " pixels: downscale it first");
  }
  if (static_cast<int64_t>(width) * height > kMaxImagePixels) {
    throw Error(ErrorCode::kImageDecode, "image is " + std::to_string(width) + "x" + std::to_string(height) +
                                             "; the largest supported image has " +
                                             std::to_string(kMaxImagePixels) + " pixels (2^28): downscale it first");
  }
}

ProcessedImage preprocess_image(const uint8_t* rgb, int width, int height, int tile_size, int max_num_tiles,
                                ThreadPool* pool) {
  validate_image_size(width, height);
  check_tile_args(tile_size, max_num_tiles);
  if (rgb == nullptr) throw Error(ErrorCode::kInvalidArgument, "preprocess_image: null pixel buffer");

  const int S = tile_size;
  ProcessedImage out;
  out.grid = select_tile_grid(width, height, S, max_num_tiles);
  const int nw = out.grid.n_w, nh = out.grid.n_h;
  out.num_tiles = 1 + nw * nh;
  const size_t tile_floats = 3 * static_cast<size_t>(S) * S;
  out.pixel_values.resize(static_cast<size_t>(out.num_tiles) * tile_floats);

  // Thumbnail: [S, S, 3] uint8 -> tile 0.
  {
    std::vector<uint8_t> thumb(static_cast<size_t>(S) * S * 3);
    resize_bicubic_antialias_u8(rgb, width, height, 3, thumb.data(), S, S, pool);
    write_tile(thumb.data(), S, 0, 0, S, out.pixel_values.data());
  }

  // Canvas: [nh*S, nw*S, 3] uint8, then tiles 1..nw*nh in row-major order.
  const int cw = nw * S, ch = nh * S;
  std::vector<uint8_t> canvas(static_cast<size_t>(cw) * ch * 3);
  resize_bicubic_antialias_u8(rgb, width, height, 3, canvas.data(), cw, ch, pool);
  auto tile_fn = [&](int64_t t) {
    const int ty = static_cast<int>(t) / nw, tx = static_cast<int>(t) % nw;
    write_tile(canvas.data(), cw, tx * S, ty * S, S, out.pixel_values.data() + (1 + t) * tile_floats);
  };
  const int64_t tiles = static_cast<int64_t>(nw) * nh;
  if (pool != nullptr && tiles > 1) {
    pool->run_tasks(tiles, tile_fn);
  } else {
    for (int64_t t = 0; t < tiles; ++t) tile_fn(t);
  }
  return out;
}

void preprocess_frame_into(const uint8_t* rgb, int width, int height, int tile_size, float* out, ThreadPool* pool) {
  validate_image_size(width, height);
  check_tile_args(tile_size, 1);
  if (rgb == nullptr || out == nullptr) throw Error(ErrorCode::kInvalidArgument, "preprocess_frame: null buffer");
  const int S = tile_size;
  std::vector<uint8_t> frame(static_cast<size_t>(S) * S * 3);
  resize_bicubic_antialias_u8(rgb, width, height, 3, frame.data(), S, S, pool);
  write_tile(frame.data(), S, 0, 0, S, out);
}

std::vector<float> preprocess_frame(const uint8_t* rgb, int width, int height, int tile_size, ThreadPool* pool) {
  check_tile_args(tile_size, 1);
  std::vector<float> out(3 * static_cast<size_t>(tile_size) * tile_size);
  preprocess_frame_into(rgb, width, height, tile_size, out.data(), pool);
  return out;
}

}  // namespace plm
