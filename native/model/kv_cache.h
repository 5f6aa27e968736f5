// The paged key/value cache of every sequence of a model: fixed-size blocks of kBlockTokens positions (all
// layers), handed out from one pool under a byte budget, reference-counted so sequences can share a prefix,
// and indexed by a hash of their content so a later request with the same prefix (image placeholders
// included) reuses them. Blocks whose last user left stay cached until the pool needs them (LRU).
//
// Layout of a block (f32): for each layer, K then V:
//   K: [kv_heads, head_dim, kBlockTokens]  keys transposed, so attention scores run over 16 keys per vector
//   V: [kBlockTokens, kv_heads * head_dim]
// The pool is one reserved address range (budget bytes, MAP_NORESERVE): a block's pages become resident on its
// first write, so an unused budget costs no memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "core/content_hash.h"

namespace plm {

using BlockHash = Hash128;  // chained over blocks: see KvCache::block_hash

class KvCache {
 public:
  static constexpr int64_t kBlockTokens = 32;

  // budget_bytes is rounded down to whole blocks (at least one).
  KvCache(int layers, int kv_heads, int head_dim, size_t budget_bytes);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int layers() const { return layers_; }
  int64_t row_width() const { return row_width_; }          // kv_heads * head_dim
  size_t block_bytes() const { return block_floats_ * 4; }  // all layers, K and V
  int64_t capacity() const { return capacity_; }            // blocks in the budget
  static size_t bytes_per_token(int layers, int kv_heads, int head_dim) {
    return static_cast<size_t>(layers) * 2 * kv_heads * head_dim * 4;
  }

  float* keys(int32_t block, int layer) { return base_ + block * block_floats_ + layer * 2 * layer_floats_; }
  float* values(int32_t block, int layer) { return keys(block, layer) + layer_floats_; }
  // Floats from one block's K (or V) of a layer to the next block's.
  int64_t block_stride() const { return static_cast<int64_t>(block_floats_); }
  float* base() { return base_; }
  int64_t layer_offset(int layer) const { return layer * 2 * static_cast<int64_t>(layer_floats_); }
  int64_t value_offset() const { return static_cast<int64_t>(layer_floats_); }

  // Blocks that can be handed out now: free ones plus cached ones nobody uses (evicted on demand).
  int64_t available() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Blocks promised to admitted sequences (reserve/unreserve) and not yet taken.
  int64_t reserved() const { return reserved_; }
  void reserve(int64_t blocks) { reserved_ += blocks; }
  void unreserve(int64_t blocks) { reserved_ -= blocks; }

  // A block with reference count 1: a free one, else the least recently used cached one (its hash forgotten).
  // -1 when every block is in use.
  int32_t allocate();
  void retain(int32_t block);
  // Drops one reference; at zero a hashed block stays cached (most recently used), an unhashed one is freed.
  void release(int32_t block);
  int32_t ref_count(int32_t block) const { return meta_[block].refs; }

  // The cached block holding exactly this content, retained for the caller; -1 when there is none.
  int32_t lookup(const BlockHash& h);
  // Records that `block` (full, its contents final) holds the content `h`. A block already indexed under another
  // hash, or a hash already indexed, is left as it is.
  void publish(int32_t block, const BlockHash& h);
  bool published(int32_t block) const { return meta_[block].hashed; }

  // Copies the first `rows` positions of every layer of `src` into `dst` (copy-on-write of a shared block).
  void copy_rows(int32_t src, int32_t dst, int64_t rows);

  // Forgets every cached (unused) block: they return to the free list.
  void drop_cached();

  // Counters.
  int64_t blocks_in_use() const { return capacity_ - static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t blocks_cached() const { return static_cast<int64_t>(lru_.size()); }
  // Blocks ever touched (resident pages): the pool's real memory.
  int64_t blocks_touched() const { return touched_; }

  // Hash of a block of token keys following `prev` (the previous block's hash; zero for the first block).
  static BlockHash block_hash(const BlockHash& prev, const uint64_t* keys, int64_t n) {
    return hash_words(keys, static_cast<size_t>(n), prev);
  }

 private:
  struct Meta {
    int32_t refs = 0;
    bool hashed = false;
    BlockHash hash;
    std::list<int32_t>::iterator lru;  // valid while refs == 0 and hashed
  };
  int layers_;
  int64_t row_width_;
  size_t layer_floats_;  // kBlockTokens * row_width (one of K or V of one layer)
  size_t block_floats_;  // layers * 2 * layer_floats
  int64_t capacity_ = 0;
  size_t mapped_bytes_ = 0;
  float* base_ = nullptr;
  std::vector<Meta> meta_;
  std::vector<int32_t> free_;            // never-used blocks last, so reuse keeps resident memory small
  std::list<int32_t> lru_;               // cached, unused blocks: front = most recently released
  std::unordered_map<BlockHash, int32_t, Hash128Key> index_;
  int64_t reserved_ = 0;
  int64_t touched_ = 0;
  void forget(int32_t block);
};

// The key of one prompt position for prefix matching: the token id for text; for an image/video placeholder, a
// mix of the media's content hash and the row's index within it (the same placeholder id stands for any image).
uint64_t text_token_key(int32_t id);
uint64_t media_row_key(const BlockHash& media, int64_t row);

}  // namespace plm
