#include "model/kv_cache.h"

#include <cstdint>
#include <algorithm>

#include "core/error.h"

namespace plm {

KvCache::KvCache(int layers, int64_t row_width, int64_t max_tokens)
    : row_width_(row_width), max_tokens_(max_tokens), k_(layers), v_(layers) {}

void KvCache::reserve(int64_t tokens) {
  if (tokens <= capacity_) return;
  if (tokens > max_tokens_)
    throw Error(ErrorCode::kContextOverflow, "the sequence needs " + std::to_string(tokens) +
                                                 " tokens but the context holds " + std::to_string(max_tokens_) +
                                                 ". Use a shorter prompt, fewer image tiles (maxNumTiles) or fewer "
                                                 "video frames.");
  int64_t cap = std::max<int64_t>(tokens, std::min<int64_t>(max_tokens_, std::max<int64_t>(64, capacity_ * 2)));
  try {
    for (auto& k : k_) k.resize(static_cast<size_t>(cap * row_width_));
    for (auto& v : v_) v.resize(static_cast<size_t>(cap * row_width_));
  } catch (const std::bad_alloc&) {
    throw Error(ErrorCode::kOutOfMemory, "out of memory growing the KV cache to " + std::to_string(cap) + " tokens");
  }
  capacity_ = cap;
}

size_t KvCache::bytes() const { return static_cast<size_t>(capacity_ * row_width_) * 4 * 2 * k_.size(); }

}  // namespace plm
