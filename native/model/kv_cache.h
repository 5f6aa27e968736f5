// Per-layer key/value cache of one sequence, f32, grown on demand (never pre-allocated for the full
// context): capacity doubles up to the context limit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace plm {

class KvCache {
 public:
  KvCache(int layers, int64_t row_width, int64_t max_tokens);

  // Makes room for `tokens` entries in total (keeps contents).
  void reserve(int64_t tokens);
  float* keys(int layer) { return k_[layer].data(); }      // [capacity, kv_heads * hd]
  float* values(int layer) { return v_[layer].data(); }    // [capacity, kv_heads * hd]
  int64_t length() const { return length_; }
  void set_length(int64_t n) { length_ = n; }
  int64_t max_tokens() const { return max_tokens_; }
  int64_t row_width() const { return row_width_; }
  size_t bytes() const;

 private:
  int64_t row_width_, max_tokens_, capacity_ = 0, length_ = 0;
  std::vector<std::vector<float>> k_, v_;
};

}  // namespace plm
