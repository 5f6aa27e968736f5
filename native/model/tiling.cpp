// Exact port of the grid search of HF's PerceptionLM image processor, including Python float
// semantics: int/int divisions are IEEE double divisions (Python's true division is correctly
// rounded, as is C++'s), dict keys are the double ratios in insertion order, `min`/`max` with a key
// return the first extremal element, and `>=` makes later candidates win ties.
#include "model/tiling.h"

#include <cstdint>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace plm {
namespace {

// One entry of the ordered dict {ratio: [(n_w, n_h), ...]}.
struct RatioEntry {
  double key;                                 // n_w / n_h as a Python float
  std::vector<std::pair<int, int>> grids;     // (n_w, n_h) in insertion order
};

// `_find_supported_aspect_ratios`: for chunk counts M..1, its divisors ascending.
std::vector<RatioEntry> supported_aspect_ratios(int max_num_tiles) {
  std::vector<RatioEntry> dict;
  for (int chunks = max_num_tiles; chunks >= 1; --chunks) {
    for (int x = 1; x <= chunks; ++x) {
      if (chunks % x != 0) continue;
      const int y = chunks / x;
      const double key = static_cast<double>(x) / static_cast<double>(y);
      bool found = false;
      for (auto& e : dict) {
        if (e.key == key) {
          e.grids.emplace_back(x, y);
          found = true;
          break;
        }
      }
      if (!found) dict.push_back({key, {{x, y}}});
    }
  }
  return dict;
}

// `_get_image_height_width`: aspect-preserving fit of the image into a canvas; (new_w, new_h) where
// one of the two is a float and the other floor()ed, both kept as doubles.
std::pair<double, double> fitted_size(int w, int h, int cw, int ch) {
  const double scale = static_cast<double>(w) / static_cast<double>(h);
  const double r = std::min(static_cast<double>(cw) / w, static_cast<double>(ch) / h);
  if (scale > 1.0) {
    const double nw = r * w;
    return {nw, std::floor(nw / scale)};
  }
  const double nh = r * h;
  return {std::floor(nh * scale), nh};
}

}  // namespace

TileGrid select_tile_grid(int width, int height, int tile_size, int max_num_tiles) {
  if (width <= 0 || height <= 0 || tile_size <= 0 || max_num_tiles <= 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "select_tile_grid: width, height, tile_size and max_num_tiles must be positive (got " +
                    std::to_string(width) + ", " + std::to_string(height) + ", " + std::to_string(tile_size) +
                    ", " + std::to_string(max_num_tiles) + ")");
  }
  if (max_num_tiles == 1) return {1, 1};

  const std::vector<RatioEntry> dict = supported_aspect_ratios(max_num_tiles);
  const double scale = static_cast<double>(width) / static_cast<double>(height);

  // `_fit_image_to_canvas`.
  bool have = false;
  TileGrid best{0, 0};
  std::pair<double, double> best_size{0.0, 0.0};
  for (const auto& e : dict) {
    for (const auto& g : e.grids) {
      const int64_t cw = static_cast<int64_t>(g.first) * tile_size;
      const int64_t ch = static_cast<int64_t>(g.second) * tile_size;
      if (cw < width || ch < height) continue;
      const auto size = fitted_size(width, height, static_cast<int>(cw), static_cast<int>(ch));
      if (!have) {
        have = true;
        best = {g.first, g.second};
        best_size = size;
      } else if ((scale < 1.0 && size.first >= best_size.first) ||
                 (scale >= 1.0 && size.second >= best_size.second)) {
        best = {g.first, g.second};
        best_size = size;
      }
    }
  }
  if (have) return best;

  // `_find_closest_aspect_ratio`: the first key (dict order) minimizing the distance, then the grid
  // with the largest width (landscape) or height (portrait), first one on ties.
  const RatioEntry* closest = nullptr;
  double best_d = 0.0;
  for (const auto& e : dict) {
    double d;
    if (scale >= 1.0) {
      if (!(e.key <= scale)) continue;
      d = std::fabs(e.key - scale);
    } else {
      if (!(e.key > scale)) continue;
      d = std::fabs(1.0 / e.key - 1.0 / scale);
    }
    if (closest == nullptr || d < best_d) {
      closest = &e;
      best_d = d;
    }
  }
  // Key 1.0 always qualifies, so `closest` is set.
  TileGrid out{closest->grids[0].first, closest->grids[0].second};
  for (const auto& g : closest->grids) {
    if (scale >= 1.0 ? g.first > out.n_w : g.second > out.n_h) out = {g.first, g.second};
  }
  return out;
}

}  // namespace plm
