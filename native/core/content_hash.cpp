#include "core/content_hash.h"

#include <cstring>
#include <random>

namespace plm {

const uint64_t* content_hash_key() {
  static const uint64_t* key = [] {
    static uint64_t k[2];
    std::random_device rd;
    for (uint64_t& w : k) w = (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ 0x9e3779b97f4a7c15ull;
    return k;
  }();
  return key;
}

namespace {

// Four independent lanes over 8-byte words (their multiplies overlap), folded into 128 bits at the end.
struct Lanes {
  uint64_t a, b, c, d;
  explicit Lanes(const Hash128& seed) {
    const uint64_t* k = content_hash_key();
    a = seed.lo ^ k[0];
    b = seed.hi ^ k[1];
    c = mix64(seed.lo + k[1]);
    d = mix64(seed.hi + k[0]);
  }
  Hash128 finish(uint64_t length) const {
    Hash128 h;
    h.lo = mix64(a ^ mix64(c + length));
    h.hi = mix64(b ^ mix64(d ^ (length * 0x9e3779b97f4a7c15ull)));
    return h;
  }
};

}  // namespace

Hash128 hash_bytes(const void* data, size_t bytes, Hash128 seed) {
  Lanes s(seed);
  const unsigned char* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  uint64_t w[4];
  for (; i + 32 <= bytes; i += 32) {
    std::memcpy(w, p + i, 32);
    s.a = mix64(s.a ^ w[0]);
    s.b = mix64(s.b ^ w[1]);
    s.c = mix64(s.c ^ w[2]);
    s.d = mix64(s.d ^ w[3]);
  }
  uint64_t tail[4] = {0, 0, 0, 0};
  std::memcpy(tail, p + i, bytes - i);
  s.a = mix64(s.a ^ tail[0] ^ 0x1);
  s.b = mix64(s.b ^ tail[1]);
  s.c = mix64(s.c ^ tail[2]);
  s.d = mix64(s.d ^ tail[3]);
  return s.finish(bytes);
}

Hash128 hash_words(const uint64_t* words, size_t n, Hash128 seed) {
  Lanes s(seed);
  for (size_t i = 0; i < n; ++i) {
    s.a = mix64(s.a ^ words[i]);
    s.b = mix64(s.b + words[i] + 0x632be59bd9b4e019ull);
  }
  return s.finish(n * 8);
}

}  // namespace plm
