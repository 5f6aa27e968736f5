// A keyed 128-bit content hash for cache lookups (KV blocks, image features). Not cryptographic: the key is
// drawn at random once per process, so inputs that collide cannot be prepared in advance; 128 bits make an
// accidental collision negligible. Fast enough to hash a 36-tile image's pixels (87 MB) in tens of ms.
#pragma once
#include <cstddef>
#include <cstdint>

namespace plm {

struct Hash128 {
  uint64_t lo = 0, hi = 0;
  bool operator==(const Hash128& o) const { return lo == o.lo && hi == o.hi; }
  bool operator!=(const Hash128& o) const { return !(*this == o); }
};
struct Hash128Key {
  size_t operator()(const Hash128& h) const { return static_cast<size_t>(h.lo); }
};

// Bijective 64-bit finalizer (splitmix64's output function).
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// The per-process random key (two words), drawn on first use.
const uint64_t* content_hash_key();

// Hash of `bytes` bytes at `data`, keyed, continuing from `seed` (zero to start).
Hash128 hash_bytes(const void* data, size_t bytes, Hash128 seed = {});
// Hash of n 64-bit words continuing from `seed`.
Hash128 hash_words(const uint64_t* words, size_t n, Hash128 seed);

}  // namespace plm
