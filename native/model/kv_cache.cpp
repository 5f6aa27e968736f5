#include "model/kv_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "core/error.h"

namespace plm {

KvCache::KvCache(int layers, int kv_heads, int head_dim, size_t budget_bytes)
    : layers_(layers), row_width_(int64_t(kv_heads) * head_dim) {
  layer_floats_ = static_cast<size_t>(kBlockTokens * row_width_);
  block_floats_ = static_cast<size_t>(layers) * 2 * layer_floats_;
  capacity_ = std::max<int64_t>(1, static_cast<int64_t>(budget_bytes / block_bytes()));
  if (capacity_ > INT32_MAX / 2) capacity_ = INT32_MAX / 2;
  mapped_bytes_ = static_cast<size_t>(capacity_) * block_bytes();
  void* p = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw Error(ErrorCode::kOutOfMemory, "cannot reserve " + std::to_string(mapped_bytes_ >> 20) +
                                             " MiB of address space for the KV cache: lower kvCacheBytes, maxContext "
                                             "or sequences");
  base_ = static_cast<float*>(p);
  meta_.resize(static_cast<size_t>(capacity_));
  free_.reserve(static_cast<size_t>(capacity_));
  for (int64_t b = capacity_ - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));  // block 0 handed out first
}

KvCache::~KvCache() {
  if (base_) munmap(base_, mapped_bytes_);
}

void KvCache::forget(int32_t block) {
  Meta& m = meta_[block];
  if (!m.hashed) return;
  auto it = index_.find(m.hash);
  if (it != index_.end() && it->second == block) index_.erase(it);
  m.hashed = false;
}

int32_t KvCache::allocate() {
  int32_t b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
    touched_ = std::max<int64_t>(touched_, b + 1);
  } else if (!lru_.empty()) {
    b = lru_.back();
    lru_.pop_back();
    forget(b);
  } else {
    return -1;
  }
  meta_[b].refs = 1;
  return b;
}

void KvCache::retain(int32_t block) {
  Meta& m = meta_[block];
  if (m.refs == 0 && m.hashed) lru_.erase(m.lru);
  ++m.refs;
}

void KvCache::release(int32_t block) {
  Meta& m = meta_[block];
  if (m.refs <= 0) throw Error(ErrorCode::kInternal, "KV block " + std::to_string(block) + " released twice");
  if (--m.refs > 0) return;
  if (m.hashed) {
    lru_.push_front(block);
    m.lru = lru_.begin();
  } else {
    free_.push_back(block);
  }
}

int32_t KvCache::lookup(const BlockHash& h) {
  auto it = index_.find(h);
  if (it == index_.end()) return -1;
  retain(it->second);
  return it->second;
}

void KvCache::publish(int32_t block, const BlockHash& h) {
  Meta& m = meta_[block];
  if (m.hashed || index_.count(h)) return;
  m.hashed = true;
  m.hash = h;
  index_.emplace(h, block);
}

void KvCache::copy_rows(int32_t src, int32_t dst, int64_t rows) {
  if (rows <= 0) return;
  const int64_t hd_rows = row_width_;  // K: [row_width][kBlockTokens] (per kv head, per dim): copy columns
  for (int l = 0; l < layers_; ++l) {
    const float* ks = keys(src, l);
    float* kd = keys(dst, l);
    for (int64_t r = 0; r < hd_rows; ++r)
      std::memcpy(kd + r * kBlockTokens, ks + r * kBlockTokens, static_cast<size_t>(rows) * sizeof(float));
    std::memcpy(values(dst, l), values(src, l), static_cast<size_t>(rows * row_width_) * sizeof(float));
  }
}

void KvCache::drop_cached() {
  while (!lru_.empty()) {
    const int32_t b = lru_.back();
    lru_.pop_back();
    forget(b);
    free_.push_back(b);
  }
}

uint64_t text_token_key(int32_t id) { return static_cast<uint64_t>(static_cast<uint32_t>(id)); }

uint64_t media_row_key(const BlockHash& media, int64_t row) {
  // Never a text key: those fit in 32 bits, this one has bit 63 set.
  return mix64(media.lo ^ mix64(media.hi + static_cast<uint64_t>(row))) | (1ull << 63);
}

}  // namespace plm
