// SHA-256 (FIPS 180-4), incremental, for identifying the checkpoint a derived file was made from.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace plm {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  // Finishes the hash and returns it as 64 lowercase hex digits; the object must not be updated afterwards.
  std::string hex_digest();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, size_t n);

}  // namespace plm
