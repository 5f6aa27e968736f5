// Tile-grid selection of the Hugging Face PerceptionLM image processor
// (transformers 5.18 `PerceptionLMImageProcessor`: `_find_supported_aspect_ratios`,
// `_fit_image_to_canvas`, `_get_image_height_width`, `_find_closest_aspect_ratio`; spec §3.1).
#pragma once

namespace plm {

struct TileGrid {
  int n_w;  // tiles across (columns)
  int n_h;  // tiles down (rows)
};

// Grid (n_w, n_h) for a width x height image. The canvas is (n_w*tile_size) x (n_h*tile_size).
// max_num_tiles == 1 gives (1, 1). Otherwise: the canvas, among all n_w*n_h <= max_num_tiles, that
// contains the image and up-scales it most (ties: the later candidate in HF's iteration order wins);
// if none contains it, the grid of the closest supported aspect ratio (largest width or height).
// Throws plm::Error(kInvalidArgument) for non-positive arguments.
TileGrid select_tile_grid(int width, int height, int tile_size, int max_num_tiles);

}  // namespace plm
